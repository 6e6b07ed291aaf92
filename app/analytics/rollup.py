"""Closing finished UTC days into the per-user and per-model day tables (and, when a Sunday
closes, its ISO week into the per-user week table).

Charges add to today's ``usage_daily`` rows only: the hot path carries one upsert, and no
more. A charge's day is its database transaction's time, and statement_timeout and
idle_in_transaction_session_timeout bound how long such a transaction (a few statements)
can run, so a day that ended ``grace`` ago (at least two minutes, 15 by default, which also
absorbs clock skew between hosts) can receive no more charges: it is closed. Closing sums
the day in one transaction, under the rollup advisory lock, and advances ``closed_through``;
analytics then read the much smaller closed tables for every day up to it.

Refunds, the only later writes to a past day, go through ``repository.add_past_usage``,
which updates the closed tables as well when the day is closed. ``creditd verify`` checks
that every closed day and week equals the sums of ``usage_daily``.

After downtime the worker closes every missed day, oldest first, one transaction each.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import repository as repo

DEFAULT_GRACE = timedelta(minutes=15)


def last_closable_day(now: datetime, grace: timedelta) -> date:
    """The last UTC day that ended at least ``grace`` before ``now``."""
    return (now - grace).astimezone(UTC).date() - timedelta(days=1)


async def close_next_day(
    session: AsyncSession, *, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> date | None:
    """Close the oldest day not yet closed, if it is due; returns it (None: nothing due, or
    another transaction holds the rollup lock: the next run retries).

    The first time, days before the earliest usage are skipped; with no usage at all the
    last closable day is marked closed straight away (there is nothing to sum).
    """
    locked, closed = await repo.lock_rollup(session)
    if not locked:
        return None
    last = last_closable_day(now, grace)
    if closed is not None:
        if closed >= last:
            return None
        day = closed + timedelta(days=1)
    else:
        first = await repo.first_usage_day(session)
        day = last if first is None or first > last else first
    await repo.close_day(session, day, at=now)
    return day
