"""Spend analytics over the ``usage_daily`` rollup, in whole UTC days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import repository as repo
from app.analytics.exceptions import TeamFilterNeedsTeamGroup, WindowOutOfOrder, WindowTooLong
from app.analytics.schemas import (
    TEAM_GROUPS,
    GroupBy,
    LiabilityOut,
    PaidLiability,
    SpendOut,
    SpendRow,
    SummaryOut,
)
from app.auth.service import Principal
from app.core.clock import utcnow
from app.core.money import ZERO
from app.payments.currency import round_to_minor

DEFAULT_DAYS = 30
MAX_DAYS = 366


@dataclass(frozen=True)
class Window:
    """UTC days ``start`` (inclusive) to ``end`` (exclusive)."""

    start: date
    end: date

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time(), UTC)

    @property
    def end_at(self) -> datetime:
        return datetime.combine(self.end, time(), UTC)


def _day_floor(at: datetime) -> date:
    return at.astimezone(UTC).date()


def _day_ceil(at: datetime) -> date:
    utc = at.astimezone(UTC)
    return utc.date() if utc.time() == time() else utc.date() + timedelta(days=1)


def resolve_window(start: datetime | None, end: datetime | None, *, now: datetime) -> Window:
    """The whole UTC days covering [start, end): ``end`` defaults to now, ``start`` to 30 days
    before the effective end; start must come before end, and the days number at most 366."""
    raw_end = end if end is not None else now
    if start is not None and start >= raw_end:
        raise WindowOutOfOrder(
            "start must be before end" + ("" if end is not None else " (which defaults to now)")
        )
    last = _day_ceil(raw_end)
    first = _day_floor(start) if start is not None else last - timedelta(days=DEFAULT_DAYS)
    if (last - first).days > MAX_DAYS:
        raise WindowTooLong(
            f"The window covers {(last - first).days} UTC days; at most {MAX_DAYS} are allowed."
        )
    return Window(first, last)


def _key(group_by: GroupBy, value: object) -> str | None:
    if group_by == "day":
        assert isinstance(value, date)
        return value.isoformat()
    if group_by == "feature" and value == "":
        return None  # the rollup stores "no feature" as ''
    return str(value)


async def spend(
    session: AsyncSession,
    principal: Principal,
    *,
    group_by: GroupBy,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    team_id: str | None = None,
) -> SpendOut:
    if team_id is not None and group_by not in TEAM_GROUPS:
        raise TeamFilterNeedsTeamGroup()  # it would be ignored: say so instead
    window = resolve_window(start, end, now=utcnow())
    if group_by in TEAM_GROUPS:
        rows = await repo.team_spend(
            session,
            principal.project_id,
            per_member=group_by == "member",
            start=window.start,
            end=window.end,
            limit=limit,
            team_id=team_id,
        )
    else:
        rows = await repo.spend(
            session,
            principal.project_id,
            group_by=group_by,
            start=window.start,
            end=window.end,
            limit=limit,
        )
    return SpendOut(
        group_by=group_by,
        start=window.start_at,
        end=window.end_at,
        data=[
            SpendRow(key=_key(group_by, r.key), credits=r.credits, transactions=r.transactions)
            for r in rows
        ],
    )


async def summary(
    session: AsyncSession, principal: Principal, *, start: datetime | None, end: datetime | None
) -> SummaryOut:
    window = resolve_window(start, end, now=utcnow())
    row = await repo.summary(session, principal.project_id, start=window.start, end=window.end)
    return SummaryOut(
        start=window.start_at,
        end=window.end_at,
        credits_consumed=row.credits,
        active_users=row.active_users,
        transactions=row.transactions,
        top_model=row.top_model,
        top_user=row.top_user,
    )


async def liability(session: AsyncSession, principal: Principal, *, now: datetime) -> LiabilityOut:
    """Outstanding paid credits and their money value per currency, unpriced paid credits,
    promotional credits and debt, over users that exist (deleted users' grants are out)."""
    paid: list[PaidLiability] = []
    unpriced = promotional = ZERO
    for row in await repo.liability(session, principal.project_id, now):
        if row["category"] == "promotional":
            promotional += row["credits"]
        elif row["cost_currency"] is None:
            unpriced += row["credits"]
        else:
            paid.append(
                PaidLiability(
                    currency=row["cost_currency"],
                    credits=row["credits"],
                    value=to_minor_units(row["value"], row["cost_currency"]),
                )
            )
    return LiabilityOut(
        paid=paid,
        paid_unpriced_credits=unpriced,
        promotional_credits=promotional,
        debt=await repo.debt(session, principal.project_id),
        as_of=now,
    )


def to_minor_units(value: Decimal, currency: str) -> Decimal:
    """``value`` rounded half-up to the currency's ISO 4217 minor units."""
    return round_to_minor(value, currency)
