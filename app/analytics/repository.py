"""SQL for the usage rollup (``usage_daily``) that spend caps and analytics read."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.analytics.schemas import GroupBy
from app.db.models.usage_daily import UsageDaily
from app.db.scoping import scoped_columns
from app.db.session import driver
from app.db.writes import Write

_ADD_USAGE = """
    INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits, transactions)
    VALUES ($1, ($2::timestamptz AT TIME ZONE 'UTC')::date, $3, $4, $5, $6, $7)
    ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
    SET credits = u.credits + EXCLUDED.credits,
        transactions = u.transactions + EXCLUDED.transactions
"""


def add_usage(
    *,
    project_id: uuid.UUID,
    at: datetime,
    user_id: str,
    model: str,
    feature: str | None,
    credits: Decimal,
    transactions: int = 1,
) -> Write:
    """Count a charge (or, with a negative amount and no transaction, a refund) in its UTC day;
    carried in the statement that makes the charge."""
    return Write(_ADD_USAGE, (project_id, at, user_id, model, feature or "", credits, transactions))


# Reads. Every query scans one project's rows of a day range: the primary key
# (project_id, day, ...) serves it as an index range scan.

_KEYS: dict[str, InstrumentedAttribute[Any]] = {
    "user": UsageDaily.user_id,
    "model": UsageDaily.model,
    "feature": UsageDaily.feature,
    "day": UsageDaily.day,
}


def _in_window(project_id: uuid.UUID, start: date, end: date, *columns: Any) -> Select[Any]:
    return scoped_columns(UsageDaily, project_id, *columns).where(
        UsageDaily.day >= start, UsageDaily.day < end
    )


def spend_query(
    project_id: uuid.UUID, *, group_by: GroupBy, start: date, end: date, limit: int
) -> Select[Any]:
    """Credits and charges per ``group_by`` key in days [start, end): the top ``limit`` by
    credits (ties by key), or for ``day`` the first ``limit`` days."""
    key = _KEYS[group_by]
    credits = func.sum(UsageDaily.credits).label("credits")
    stmt = _in_window(
        project_id,
        start,
        end,
        key.label("key"),
        credits,
        func.sum(UsageDaily.transactions).label("transactions"),
    ).group_by(key)
    order = (key.asc(),) if group_by == "day" else (credits.desc(), key.asc())
    return stmt.order_by(*order).limit(limit)


def summary_query(project_id: uuid.UUID, *, start: date, end: date) -> Select[Any]:
    """Totals, active users and the top user and model of days [start, end), in one scan:
    one pass aggregates per user and per model at once (grouping sets)."""
    g = (
        _in_window(
            project_id,
            start,
            end,
            UsageDaily.user_id,
            UsageDaily.model,
            # 0 on the per-user rows, 1 on the per-model rows.
            func.grouping(UsageDaily.user_id).label("per_model"),
            func.sum(UsageDaily.credits).label("credits"),
            func.sum(UsageDaily.transactions).label("transactions"),
        )
        .group_by(func.grouping_sets(tuple_(UsageDaily.user_id), tuple_(UsageDaily.model)))
        .cte("g")
    )
    top_user = (
        select(g.c.user_id)
        .where(g.c.per_model == 0)
        .order_by(g.c.credits.desc(), g.c.user_id)
        .limit(1)
        .scalar_subquery()
    )
    top_model = (
        select(g.c.model)
        .where(g.c.per_model == 1)
        .order_by(g.c.credits.desc(), g.c.model)
        .limit(1)
        .scalar_subquery()
    )
    return select(
        func.coalesce(func.sum(g.c.credits), 0).label("credits"),
        func.coalesce(func.sum(g.c.transactions), 0).label("transactions"),
        func.count().filter(g.c.transactions > 0).label("active_users"),
        top_user.label("top_user"),
        top_model.label("top_model"),
    ).where(g.c.per_model == 0)


# Analytics aggregate up to a few million rollup rows: enough memory to hash them without
# spilling to disk, and a plan made for this tenant's size and window (a cached generic plan
# cannot tell a 1-day window of a small project from 366 days of a big one).
TUNE = "SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan"


async def _tune(session: AsyncSession) -> None:
    await driver(session).execute(TUNE)


async def spend(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    group_by: GroupBy,
    start: date,
    end: date,
    limit: int,
) -> list[Row[Any]]:
    await _tune(session)
    stmt = spend_query(project_id, group_by=group_by, start=start, end=end, limit=limit)
    return list((await session.execute(stmt)).all())


async def summary(
    session: AsyncSession, project_id: uuid.UUID, *, start: date, end: date
) -> Row[Any]:
    await _tune(session)
    stmt = summary_query(project_id, start=start, end=end)
    row: Row[Any] = (await session.execute(stmt)).one()
    return row
