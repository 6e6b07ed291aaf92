"""Refill periods: anchored at the tier assignment, in UTC, months clamped to month ends."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta


def add_periods(anchor: datetime, interval: str, count: int) -> datetime:
    """The start of period ``count`` after ``anchor`` (computed from the anchor: no drift)."""
    if interval == "day":
        return anchor + timedelta(days=count)
    if interval == "week":
        return anchor + timedelta(weeks=count)
    months = count * (12 if interval == "year" else 1)
    if interval not in ("month", "year"):
        raise ValueError(f"no periods for interval {interval!r}")
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def current_period(anchor: datetime, interval: str, now: datetime) -> tuple[datetime, datetime]:
    """(start, end) of the period containing ``now``; one period only, however long the gap."""
    if interval in ("day", "week"):
        step = timedelta(days=1 if interval == "day" else 7)
        count = max(0, (now - anchor) // step)
    else:
        per = 12 if interval == "year" else 1
        count = max(0, ((now.year - anchor.year) * 12 + now.month - anchor.month) // per)
        while count > 0 and add_periods(anchor, interval, count) > now:
            count -= 1
        while add_periods(anchor, interval, count + 1) <= now:
            count += 1
    return add_periods(anchor, interval, count), add_periods(anchor, interval, count + 1)
