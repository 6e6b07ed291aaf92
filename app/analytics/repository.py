"""SQL for the usage rollups: ``usage_daily`` (spend caps, today's analytics) and the
closed-day tables per user and per model (analytics of past days)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import CompoundSelect, Row, Select, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.schemas import GroupBy
from app.db.models.team import UsageTeamDaily
from app.db.models.usage_daily import UsageDaily, UsageModelDay, UsageUserDay, UsageUserWeek
from app.db.scoping import scoped_columns
from app.db.session import driver
from app.db.writes import Write

_ADD_USAGE = """
    INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits, transactions)
    VALUES ($1, (coalesce($2::timestamptz, now()) AT TIME ZONE 'UTC')::date, $3, $4, $5, $6, $7)
    ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
    SET credits = u.credits + EXCLUDED.credits,
        transactions = u.transactions + EXCLUDED.transactions
"""


def add_usage(
    *,
    project_id: uuid.UUID,
    at: datetime | None,
    user_id: str,
    model: str,
    feature: str | None,
    credits: Decimal,
    transactions: int = 1,
) -> Write:
    """Count a charge in its UTC day (``at``; None: the database transaction's time, which
    ``completed_at`` also takes); carried in the statement that makes the charge. Only for
    today's usage: a day the rollup may have closed needs ``add_past_usage``."""
    return Write(_ADD_USAGE, (project_id, at, user_id, model, feature or "", credits, transactions))


_ADD_TEAM_USAGE = """
    INSERT INTO usage_team_daily AS u (project_id, team_id, user_id, day, credits, transactions)
    VALUES ($1, $3, $4, (coalesce($2::timestamptz, now()) AT TIME ZONE 'UTC')::date, $5, $6)
    ON CONFLICT (project_id, team_id, user_id, day) DO UPDATE
    SET credits = u.credits + EXCLUDED.credits,
        transactions = u.transactions + EXCLUDED.transactions
"""


def add_team_usage(
    *,
    project_id: uuid.UUID,
    at: datetime | None,
    team_id: str,
    user_id: str,
    credits: Decimal,
    transactions: int = 1,
) -> Write:
    """Count a charge to a team's account by member ``user_id`` in its UTC day (``at``; None:
    the database transaction's time). Team rows have no closed-day tables: any day may be
    written (refunds write the day of their charge)."""
    return Write(_ADD_TEAM_USAGE, (project_id, at, team_id, user_id, credits, transactions))


# Refunds to a past day and the closer exclude each other with this transaction-scoped
# advisory lock (two int4 keys: apart from the one-bigint keys idempotency uses). Refunds
# share it; the closer takes it exclusively, and skips a run rather than wait for it.
_ROLLUP_LOCK = (0x63726564, 1)


async def add_past_usage(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    at: datetime,
    now: datetime,
    user_id: str,
    model: str,
    feature: str | None,
    credits: Decimal,
    transactions: int = 0,
) -> None:
    """Count usage on the UTC day of ``at`` whether or not that day is closed (a refund
    counts on the day of its charge): in ``usage_daily``, and in the closed-day and week
    tables too when the day (week) is closed.

    A day before today's (by ``now``) may be closed meanwhile, so this first waits for any
    running close (shared advisory lock, held until commit); the next statement's snapshot
    then sees that close committed. Either the close ran before and this adds itself to the
    closed rows, or it runs after this commits and sums it from ``usage_daily``. Today's day
    cannot be closed yet (the closer waits a grace period past midnight): no lock.
    """
    args = (project_id, at, user_id, model, feature or "", credits, transactions)
    conn = driver(session)
    if at.astimezone(UTC).date() >= now.astimezone(UTC).date():
        await conn.execute(_ADD_USAGE, *args)
        return
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", *_ROLLUP_LOCK)
    await conn.execute(_ADD_PAST_USAGE, *args)


_ADD_PAST_USAGE = """
    WITH rollup AS (SELECT closed_through FROM usage_rollup WHERE id = 1),
    d AS (SELECT day, day - (extract(isodow FROM day)::int - 1) AS week  -- its ISO Monday
          FROM (SELECT ($2::timestamptz AT TIME ZONE 'UTC')::date AS day) AS at),
    fine AS (
        INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits,
                                      transactions)
        SELECT $1, d.day, $3, $4, $5, $6, $7 FROM d
        ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
        SET credits = u.credits + EXCLUDED.credits,
            transactions = u.transactions + EXCLUDED.transactions
    ),
    per_user AS (
        INSERT INTO usage_user_days AS c (project_id, day, user_id, credits, transactions)
        SELECT $1, d.day, $3, $6, $7 FROM d, rollup WHERE d.day <= rollup.closed_through
        ON CONFLICT (project_id, day, user_id) DO UPDATE
        SET credits = c.credits + EXCLUDED.credits,
            transactions = c.transactions + EXCLUDED.transactions
    ),
    per_user_week AS (
        INSERT INTO usage_user_weeks AS c (project_id, week, user_id, credits, transactions)
        SELECT $1, d.week, $3, $6, $7 FROM d, rollup WHERE d.week + 6 <= rollup.closed_through
        ON CONFLICT (project_id, week, user_id) DO UPDATE
        SET credits = c.credits + EXCLUDED.credits,
            transactions = c.transactions + EXCLUDED.transactions
    )
    INSERT INTO usage_model_days AS c (project_id, day, model, feature, credits, transactions)
    SELECT $1, d.day, $4, $5, $6, $7 FROM d, rollup WHERE d.day <= rollup.closed_through
    ON CONFLICT (project_id, day, model, feature) DO UPDATE
    SET credits = c.credits + EXCLUDED.credits,
        transactions = c.transactions + EXCLUDED.transactions
"""


# Closing days. Charges only ever add to today's rows of ``usage_daily`` (one row per day,
# user, model and feature: it barely compresses a day's charges). Once a UTC day is over, the
# rollup worker sums it into far smaller tables (per user; per model and feature; and, when a
# Sunday closes, per user and ISO week) and advances ``usage_rollup.closed_through``;
# analytics read closed days from those.

# The snapshot may predate a refund that released the lock just before; closed_through is
# only ever changed under the exclusive lock, and the closer's later statements see the refund.
_LOCK_ROLLUP = """
    SELECT pg_try_advisory_xact_lock($1, $2) AS locked,
           (SELECT closed_through FROM usage_rollup WHERE id = 1) AS closed_through,
           EXISTS (SELECT FROM usage_rollup WHERE id = 1) AS present
"""

# The earliest day with usage: the primary key (project_id, day, ...) answers it per project.
_FIRST_USAGE_DAY = """
    SELECT min(f.day) FROM projects p
    CROSS JOIN LATERAL (SELECT min(day) AS day FROM usage_daily WHERE project_id = p.id) f
"""

# Per project, so each scan is a primary-key range (project_id, day); replaces any rows the
# day already had, so closing a day again changes nothing.
_CLOSE_USERS = """
    INSERT INTO usage_user_days AS c (project_id, day, user_id, credits, transactions)
    SELECT p.id, $1::date, f.user_id, f.credits, f.transactions
    FROM projects p
    CROSS JOIN LATERAL (
        SELECT user_id, sum(credits) AS credits, sum(transactions)::int AS transactions
        FROM usage_daily WHERE project_id = p.id AND day = $1::date
        GROUP BY user_id
    ) f
    ON CONFLICT (project_id, day, user_id) DO UPDATE
    SET credits = EXCLUDED.credits, transactions = EXCLUDED.transactions
"""
_CLOSE_MODELS = """
    INSERT INTO usage_model_days AS c (project_id, day, model, feature, credits, transactions)
    SELECT p.id, $1::date, f.model, f.feature, f.credits, f.transactions
    FROM projects p
    CROSS JOIN LATERAL (
        SELECT model, feature, sum(credits) AS credits, sum(transactions)::int AS transactions
        FROM usage_daily WHERE project_id = p.id AND day = $1::date
        GROUP BY model, feature
    ) f
    ON CONFLICT (project_id, day, model, feature) DO UPDATE
    SET credits = EXCLUDED.credits, transactions = EXCLUDED.transactions
"""
# When a Sunday closes, its ISO week (from Monday $1) is summed per user from the day table.
_CLOSE_USER_WEEK = """
    INSERT INTO usage_user_weeks AS c (project_id, week, user_id, credits, transactions)
    SELECT p.id, $1::date, f.user_id, f.credits, f.transactions
    FROM projects p
    CROSS JOIN LATERAL (
        SELECT user_id, sum(credits) AS credits, sum(transactions)::int AS transactions
        FROM usage_user_days
        WHERE project_id = p.id AND day >= $1::date AND day < $1::date + 7
        GROUP BY user_id
    ) f
    ON CONFLICT (project_id, week, user_id) DO UPDATE
    SET credits = EXCLUDED.credits, transactions = EXCLUDED.transactions
"""
_SET_CLOSED = """
    UPDATE usage_rollup
    SET closed_through = greatest(closed_through, $1), closed_at = $2 WHERE id = 1
"""
_CLOSED_THROUGH = "SELECT closed_through FROM usage_rollup WHERE id = 1"


async def lock_rollup(session: AsyncSession) -> tuple[bool, date | None]:
    """Take the rollup lock unless another transaction holds it (a closer, or a refund to a
    past day): (locked, the last closed day)."""
    row = await driver(session).fetchrow(_LOCK_ROLLUP, *_ROLLUP_LOCK)
    if not row["present"]:
        raise RuntimeError("usage_rollup has no row: run `creditd migrate`")
    return bool(row["locked"]), row["closed_through"]


async def closed_through(session: AsyncSession) -> date | None:
    day: date | None = await driver(session).fetchval(_CLOSED_THROUGH)
    return day


async def first_usage_day(session: AsyncSession) -> date | None:
    day: date | None = await driver(session).fetchval(_FIRST_USAGE_DAY)
    return day


async def close_day(session: AsyncSession, day: date, *, at: datetime) -> None:
    """Sum ``day`` into the closed-day tables and mark it (and every day before it) closed;
    the caller holds the rollup lock. Closing a day again replaces its rows with the same
    sums and never moves ``closed_through`` back."""
    conn = driver(session)
    # A big day may take longer than a request's statement_timeout; refunds to past days
    # wait for it (up to lock_timeout).
    await conn.execute("SET LOCAL statement_timeout = '10min'")
    await conn.execute(_CLOSE_USERS, day)
    await conn.execute(_CLOSE_MODELS, day)
    if day.isoweekday() == 7:
        await conn.execute(_CLOSE_USER_WEEK, day - timedelta(days=6))
    await conn.execute(_SET_CLOSED, day, at)


# Reads. A window's closed days come from the closed-day (and week) tables and its open days
# (today, mostly) from usage_daily: UNION ALL of primary-key range scans of one project.

_KEYS: dict[str, str] = {"user": "user_id", "model": "model", "feature": "feature", "day": "day"}


UsageTable = type[UsageDaily] | type[UsageUserDay] | type[UsageUserWeek] | type[UsageModelDay]


def _sources(
    start: date, end: date, closed: date | None, *, per_user: bool
) -> list[tuple[UsageTable, date, date]]:
    """Which table answers which days of [start, end): (table, first, end) ranges.

    Open days come from ``usage_daily``. Closed days come from the per-model day table or,
    per user, from whole ISO weeks of the week table plus the ragged days at either end from
    the per-user day table (a week that ends by ``closed`` is closed).
    """
    split = start if closed is None else min(max(start, closed + timedelta(days=1)), end)
    ranges: list[tuple[UsageTable, date, date]] = []
    if per_user:
        first_week = start + timedelta(days=-start.weekday() % 7)  # the first Monday >= start
        last_week = split - timedelta(days=split.weekday())  # the last Monday <= split
        if first_week < last_week:
            ranges += [
                (UsageUserDay, start, first_week),
                (UsageUserWeek, first_week, last_week),
                (UsageUserDay, last_week, split),
            ]
        else:
            ranges.append((UsageUserDay, start, split))
    else:
        ranges.append((UsageModelDay, start, split))
    ranges.append((UsageDaily, split, end))
    return [(table, lo, hi) for table, lo, hi in ranges if lo < hi]


def _usage_rows(
    project_id: uuid.UUID, *, start: date, end: date, closed: date | None, key: str
) -> Select[Any] | CompoundSelect[Any]:
    """(key, credits, transactions) rows of days [start, end), not yet grouped: one primary-key
    range scan of this project per source."""
    parts: list[Select[Any]] = []
    for table, lo, hi in _sources(start, end, closed, per_user=key == "user_id"):
        period = table.week if table is UsageUserWeek else table.day  # type: ignore[union-attr]
        parts.append(
            scoped_columns(
                table,
                project_id,
                getattr(table, key).label("key"),
                table.credits.label("credits"),
                table.transactions.label("transactions"),
            ).where(period >= lo, period < hi)
        )
    return parts[0] if len(parts) == 1 else union_all(*parts)


def _grouped(rows: Select[Any] | CompoundSelect[Any], name: str) -> Any:
    sub = rows.subquery()
    return (
        select(
            sub.c.key.label("key"),
            func.sum(sub.c.credits).label("credits"),
            func.sum(sub.c.transactions).label("transactions"),
        )
        .group_by(sub.c.key)
        .cte(name)
    )


def spend_query(
    project_id: uuid.UUID,
    *,
    group_by: GroupBy,
    start: date,
    end: date,
    limit: int,
    closed: date | None,
) -> Select[Any]:
    """Credits and charges per ``group_by`` key in days [start, end): the top ``limit`` by
    credits (ties by key), or for ``day`` the first ``limit`` days. Days up to ``closed``
    are read from the closed-day tables."""
    key = _KEYS[group_by]
    rows = _usage_rows(project_id, start=start, end=end, closed=closed, key=key)
    g = _grouped(rows, "g")
    order = (g.c.key.asc(),) if group_by == "day" else (g.c.credits.desc(), g.c.key.asc())
    return select(g.c.key, g.c.credits, g.c.transactions).order_by(*order).limit(limit)


def summary_query(
    project_id: uuid.UUID, *, start: date, end: date, closed: date | None
) -> Select[Any]:
    """Totals and the top model of days [start, end) from the per-model rows; active users
    and the top user from the per-user rows."""
    users = _grouped(
        _usage_rows(
            project_id,
            start=start,
            end=end,
            closed=closed,
            key="user_id",
        ),
        "users",
    )
    models = _grouped(
        _usage_rows(project_id, start=start, end=end, closed=closed, key="model"),
        "models",
    )

    def top(g: Any) -> Any:
        return select(g.c.key).order_by(g.c.credits.desc(), g.c.key).limit(1).scalar_subquery()

    credits = func.coalesce(func.sum(models.c.credits), 0)
    charges = func.coalesce(func.sum(models.c.transactions), 0)
    active = select(func.count()).select_from(users).where(users.c.transactions > 0)
    return select(
        select(credits).scalar_subquery().label("credits"),
        select(charges).scalar_subquery().label("transactions"),
        active.scalar_subquery().label("active_users"),
        top(users).label("top_user"),
        top(models).label("top_model"),
    )


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
    closed = await closed_through(session)
    stmt = spend_query(
        project_id, group_by=group_by, start=start, end=end, limit=limit, closed=closed
    )
    return list((await session.execute(stmt)).all())


async def team_spend(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    per_member: bool,
    start: date,
    end: date,
    limit: int,
    team_id: str | None,
) -> list[Row[Any]]:
    """Credits charged to team accounts in days [start, end) per team (or per member), top
    ``limit`` by credits: ``usage_team_daily`` is small (team charges only), read directly."""
    t = UsageTeamDaily
    key = (t.user_id if per_member else t.team_id).label("key")
    credits = func.sum(t.credits).label("credits")
    stmt = (
        scoped_columns(t, project_id, key, credits, func.sum(t.transactions).label("transactions"))
        .where(t.day >= start, t.day < end)
        .group_by(key)
        .order_by(credits.desc(), key.asc())
        .limit(limit)
    )
    if team_id is not None:
        stmt = stmt.where(t.team_id == team_id)
    return list((await session.execute(stmt)).all())


async def summary(
    session: AsyncSession, project_id: uuid.UUID, *, start: date, end: date
) -> Row[Any]:
    await _tune(session)
    closed = await closed_through(session)
    stmt = summary_query(project_id, start=start, end=end, closed=closed)
    row: Row[Any] = (await session.execute(stmt)).one()
    return row


# Outstanding credits: what unexpired grants of open accounts still hold. The money value of a
# paid grant's remainder is remaining * cost_amount / amount, divided at 30 fractional digits
# so that the sum rounds to the currency's minor units as the exact value would.
_LIABILITY = """
    SELECT g.category, g.cost_currency,
           sum(g.remaining) AS credits,
           sum(round(g.remaining * g.cost_amount, 30) / g.amount) AS value
    FROM grants g JOIN accounts a ON a.id = g.account_id
    WHERE g.project_id = $1 AND g.remaining > 0 AND g.expired_at IS NULL
      AND (g.expires_at IS NULL OR g.expires_at > $2) AND a.closed_at IS NULL
    GROUP BY g.category, g.cost_currency
    ORDER BY g.category, g.cost_currency NULLS FIRST
"""
_DEBT = "SELECT coalesce(sum(debt), 0) FROM accounts WHERE project_id = $1 AND closed_at IS NULL"


async def liability(session: AsyncSession, project_id: uuid.UUID, now: datetime) -> list[Any]:
    """Outstanding credits per (category, cost currency), with the value of priced ones."""
    return list(await driver(session).fetch(_LIABILITY, project_id, now))


async def debt(session: AsyncSession, project_id: uuid.UUID) -> Decimal:
    total: Decimal = await driver(session).fetchval(_DEBT, project_id)
    return total
