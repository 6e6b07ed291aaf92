"""SQL for usage transactions.

Lock order everywhere: the transaction row first, then the account row. A transaction's
status, expiry and refunds change only under its row lock; balances only under the account's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.credits.repository import LockedAccount
from app.db.models import Transaction
from app.db.scoping import scoped_select
from app.db.session import driver
from app.db.writes import Write
from app.pricing.service import (
    JOB_PRICE_COLUMNS,
    PRICE_COLUMNS,
    Price,
    job_lateral,
    optional_price,
    price_lateral,
)
from app.tiers.rules import TIER_COLUMNS, Rules, tier_join
from app.transactions.schemas import TransactionFilters


@dataclass(frozen=True)
class LockedTransaction:
    """A transaction row read ``FOR UPDATE``: valid until the database transaction ends."""

    id: uuid.UUID
    account_id: uuid.UUID
    user_id: str
    team_id: str | None
    model: str
    feature_identifier: str | None
    status: str
    hold_amount: Decimal
    credits_used: Decimal
    refunded_total: Decimal
    provisional_tokens: dict[str, Any] | None
    metadata: dict[str, Any]
    expires_at: datetime | None
    completed_at: datetime | None
    completion_hash: str | None
    completion_result: dict[str, Any] | None
    price_snapshot: dict[str, Any] | None  # the effective price at start (NULL: legacy rows)
    price: Price | None  # the model's current price (read in the same statement)


_TXN_FIELDS = [f for f in LockedTransaction.__dataclass_fields__ if f != "price"]
_TXN_COLUMNS = ", ".join(f"t.{f}" for f in _TXN_FIELDS)
_LOCK = f"""
    SELECT {_TXN_COLUMNS}, {PRICE_COLUMNS}
    FROM transactions t {price_lateral("t.project_id", "t.model")}
    WHERE t.project_id = $1 AND t.id = $2
    FOR UPDATE OF t
"""
# Start: the user's account, locked, with the price of the model asked for.
_LOCK_ACCOUNT = f"""
    SELECT a.id, a.total, a.held, a.debt, {PRICE_COLUMNS}, {TIER_COLUMNS},
           EXISTS (SELECT 1 FROM spend_caps c WHERE c.project_id = $1 AND c.user_id = $2)
               AS has_spend_caps,
           EXISTS (SELECT 1 FROM team_members m WHERE m.project_id = $1 AND m.user_id = $2)
               AS in_teams
    FROM users u JOIN accounts a ON a.id = u.account_id
    {tier_join("u")}
    {price_lateral("$1", "$3")}
    WHERE u.project_id = $1 AND u.id = $2 AND u.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a
"""
# A fixed-cost job's usage: the same, with the job's price instead of a model's.
_LOCK_ACCOUNT_FOR_JOB = _LOCK_ACCOUNT.replace(
    price_lateral("$1", "$3"), job_lateral("$1", "$3")
).replace(PRICE_COLUMNS, JOB_PRICE_COLUMNS)
# /v1/check reads the same without locking anything.
_READ_ACCOUNT = _LOCK_ACCOUNT.replace("FOR UPDATE OF a", "")
# The fast path's reads (app/transactions/fast.py), without locks: a start's, as the lock
# reads them, and a completion's transaction; with both, whether the request's key ($4, $3;
# NULL without one) has a row.
_KEY_FOUND = "EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.project_id = $1 AND k.key = {})"
FAST_START_READ = _READ_ACCOUNT.replace(
    "AS in_teams", f"AS in_teams, {_KEY_FOUND.format('$4')} AS key_found"
)
FAST_JOB_READ = _LOCK_ACCOUNT_FOR_JOB.replace("FOR UPDATE OF a", "").replace(
    "AS in_teams", f"AS in_teams, {_KEY_FOUND.format('$4')} AS key_found"
)
FAST_COMPLETE_READ = f"""
    SELECT t.team_id, t.model, t.status, t.hold_amount, t.provisional_tokens, t.metadata,
           t.price_snapshot, {_KEY_FOUND.format("$3")} AS key_found
    FROM transactions t
    WHERE t.project_id = $1 AND t.id = $2
"""
# Start on a team's account ($4): the team's account locked, with the member's tier rules and
# spend caps flag, the member's team caps flag and the price, in one statement. No row: no
# such (live) team, or the user is no (live) member; ``team_refusal`` then tells which.
_LOCK_TEAM_ACCOUNT = f"""
    SELECT a.id, a.total, a.held, a.debt, {PRICE_COLUMNS}, {TIER_COLUMNS},
           EXISTS (SELECT 1 FROM spend_caps c WHERE c.project_id = $1 AND c.user_id = $2)
               AS has_spend_caps,
           EXISTS (SELECT 1 FROM team_member_spend_caps mc
                   WHERE mc.project_id = $1 AND mc.team_id = $4 AND mc.user_id = $2)
               AS has_member_caps
    FROM teams tm JOIN accounts a ON a.id = tm.account_id
    JOIN team_members m ON m.project_id = tm.project_id AND m.team_id = tm.id AND m.user_id = $2
    JOIN users u ON u.project_id = m.project_id AND u.id = m.user_id AND u.deleted_at IS NULL
    {tier_join("u")}
    {price_lateral("$1", "$3")}
    WHERE tm.project_id = $1 AND tm.id = $4 AND tm.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a FOR KEY SHARE OF m
"""
# The membership row is key-share locked too: after waiting for the account's lock PostgreSQL
# re-checks only the rows it locks, so a removal committed meanwhile (the member's DELETE
# conflicts with KEY SHARE) is seen and the start refused, or the removal waits for it.
_READ_TEAM_ACCOUNT = _LOCK_TEAM_ACCOUNT.replace("FOR UPDATE OF a FOR KEY SHARE OF m", "")
_LOCK_TEAM_ACCOUNT_FOR_JOB = _LOCK_TEAM_ACCOUNT.replace(
    price_lateral("$1", "$3"), job_lateral("$1", "$3")
).replace(PRICE_COLUMNS, JOB_PRICE_COLUMNS)
_TEAM_LIVE = "SELECT 1 FROM teams WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL"
# The user's team when they belong to exactly one live team (else NULL).
_ONLY_TEAM = """
    SELECT min(m.team_id) FROM team_members m
    JOIN teams tm ON tm.project_id = m.project_id AND tm.id = m.team_id
    WHERE m.project_id = $1 AND m.user_id = $2 AND tm.deleted_at IS NULL
    HAVING count(*) = 1
"""
# Per member cap: what the member charged the team in its UTC window and holds on it now.
_MEMBER_CAP_USAGE = """
    SELECT c.period, c."limit",
           coalesce((SELECT sum(d.credits) FROM usage_team_daily d
                     WHERE d.project_id = $1 AND d.team_id = $2 AND d.user_id = $3
                       AND d.day >= CASE WHEN c.period = 'day' THEN $4::date
                                         ELSE date_trunc('month', $4::date)::date END), 0)
               AS spent,
           coalesce((SELECT sum(t.hold_amount) FROM transactions t
                     WHERE t.project_id = $1 AND t.user_id = $3 AND t.status = 'pending'
                       AND t.team_id = $2), 0) AS held
    FROM team_member_spend_caps c
    WHERE c.project_id = $1 AND c.team_id = $2 AND c.user_id = $3
    ORDER BY c.period
"""
# What a user auto-created now would start with: the default tier's allocation and rules.
_DEFAULT_TIER = f"""
    SELECT tr.credits AS tier_credits, {TIER_COLUMNS}, false AS has_spend_caps,
           {PRICE_COLUMNS}
    FROM (SELECT 1) AS one
    LEFT JOIN tiers tr ON tr.project_id = $1 AND tr.is_default
    {price_lateral("$1", "$2")}
"""
_PENDING_COUNT = """
    SELECT count(*) FROM transactions
    WHERE project_id = $1 AND user_id = $2 AND status = 'pending'
"""
# Per spend cap: credits charged in its current UTC window (from the daily rollup) and
# credits held by pending transactions, both for the cap's model ('' = every model).
_CAP_USAGE = """
    SELECT c.period, c.model, c."limit", c.action,
           coalesce((SELECT sum(d.credits) FROM usage_daily d
                     WHERE d.project_id = $1 AND d.user_id = $2
                       AND d.day >= CASE WHEN c.period = 'day' THEN $3::date
                                         ELSE date_trunc('month', $3::date)::date END
                       AND (c.model = '' OR d.model = c.model)), 0) AS spent,
           coalesce((SELECT sum(t.hold_amount) FROM transactions t
                     WHERE t.project_id = $1 AND t.user_id = $2 AND t.status = 'pending'
                       AND (c.model = '' OR t.model = c.model)), 0) AS held
    FROM spend_caps c
    WHERE c.project_id = $1 AND c.user_id = $2 AND (c.model = '' OR c.model = $4)
    ORDER BY c.period, c.model
"""
# Complete and refund: the transaction and its account, locked in that order (t, then a: the
# lock order used everywhere), with the model's price. After any lock wait PostgreSQL re-reads
# both rows, so the values returned are current.
_LOCK_WITH_ACCOUNT = f"""
    SELECT {_TXN_COLUMNS}, a.total, a.held, a.debt, {PRICE_COLUMNS}, {TIER_COLUMNS}
    FROM transactions t JOIN accounts a ON a.id = t.account_id
    JOIN users u ON u.project_id = t.project_id AND u.id = t.user_id
    {tier_join("u")}
    {price_lateral("t.project_id", "t.model")}
    WHERE t.project_id = $1 AND t.id = $2 AND a.closed_at IS NULL
    FOR UPDATE OF t, a
"""
_INSERT = """
    INSERT INTO transactions (id, project_id, account_id, user_id, model, feature_identifier,
        status, reason, hold_amount, credits_used, provisional_tokens, finalized_tokens,
        metadata, expires_at, completed_at, team_id, price_snapshot, job)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
"""
_COMPLETE = """
    UPDATE transactions
    SET status = $3, credits_used = $4, finalized_tokens = $5, metadata = $6, late = $7,
        completion_hash = $8, completion_result = $9, completed_at = now(), updated_at = now()
    WHERE project_id = $1 AND id = $2
"""
# The sweeper: due transactions with their accounts, both locked, skipping any transaction or
# account another transaction holds (a request, a psql session, another sweeper). LIMIT counts
# only the rows locked, so one locked account never hides other tenants' due holds; the skipped
# ones are picked up by a later sweep. Nothing waits, so the lock order cannot deadlock.
_LOCK_DUE = """
    SELECT t.id, t.project_id, t.account_id, t.user_id, t.team_id, t.hold_amount, t.model,
           a.total, a.held, a.debt
    FROM transactions t JOIN accounts a ON a.id = t.account_id
    WHERE t.status = 'pending' AND t.expires_at <= $1
    ORDER BY t.expires_at
    LIMIT $2
    FOR UPDATE OF t, a SKIP LOCKED
"""


def json_text(value: dict[str, Any] | None) -> str | None:
    """A jsonb argument's text (exact decimals), or None."""
    return None if value is None else render_json(value).decode()


def _locked(row: Any) -> LockedTransaction:
    return LockedTransaction(**{f: row[f] for f in _TXN_FIELDS}, price=optional_price(row))


async def lock(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> LockedTransaction | None:
    row = await driver(session).fetchrow(_LOCK, project_id, transaction_id)
    return None if row is None else _locked(row)


async def lock_with_account(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> tuple[LockedTransaction, LockedAccount, Rules] | None:
    """Lock the transaction, then its account (reading only: credits makes the changes)."""
    row = await driver(session).fetchrow(_LOCK_WITH_ACCOUNT, project_id, transaction_id)
    if row is None:
        return None
    txn = _locked(row)
    account = LockedAccount(
        txn.account_id,
        project_id,
        txn.user_id,
        row["total"],
        row["held"],
        row["debt"],
        team_id=txn.team_id,
    )
    return txn, account, Rules.from_row(row)


@dataclass(frozen=True)
class LockedForStart:
    account: LockedAccount
    price: Price | None
    rules: Rules


async def lock_account(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, model: str, *, job: bool = False
) -> LockedForStart | None:
    """Lock the user's account (if the user exists) and read the model's (or with ``job``, the
    job's) price and the tier's rules, in one trip. Reading and locking only: credits makes
    every change to the account.
    """
    sql = _LOCK_ACCOUNT_FOR_JOB if job else _LOCK_ACCOUNT
    row = await driver(session).fetchrow(sql, project_id, user_id, model)
    if row is None:
        return None
    account = LockedAccount(row["id"], project_id, user_id, row["total"], row["held"], row["debt"])
    rules = Rules.from_row(row, has_spend_caps=row["has_spend_caps"])
    return LockedForStart(account, optional_price(row), replace(rules, in_teams=row["in_teams"]))


async def lock_team_account(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    model: str,
    team_id: str,
    *,
    job: bool = False,
) -> LockedForStart | None:
    """Lock the team's account for a charge by member ``user_id``, reading the member's tier
    rules and caps flags and the model's (or job's) price, in one trip (None: see
    ``team_refusal``)."""
    sql = _LOCK_TEAM_ACCOUNT_FOR_JOB if job else _LOCK_TEAM_ACCOUNT
    row = await driver(session).fetchrow(sql, project_id, user_id, model, team_id)
    if row is None:
        return None
    account = LockedAccount(
        row["id"], project_id, user_id, row["total"], row["held"], row["debt"], team_id=team_id
    )
    return LockedForStart(account, optional_price(row), _team_rules(row))


def _team_rules(row: Any) -> Rules:
    rules = Rules.from_row(row, has_spend_caps=row["has_spend_caps"])
    return replace(rules, has_member_caps=row["has_member_caps"], in_teams=True)


# A user's own limits (spend caps, the tier's concurrency) count their starts on every account
# they charge: their own and their teams'. Those starts hold different account locks, so the
# checks serialize on this per-user lock, taken after the account's (always last: no cycle).
# The two-key form: its key space is apart from the one-key locks (idempotency, payments).
_LOCK_USER_LIMITS = (
    "SELECT pg_advisory_xact_lock(1970496882, hashtext($1::uuid::text || ':' || $2))"
)


async def lock_user_limits(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> None:
    """Serialize the checks of ``user_id``'s own limits with their starts on other accounts
    (until the transaction ends); the statements after it see what those committed."""
    await driver(session).execute(_LOCK_USER_LIMITS, project_id, user_id)


async def read_team_for_check(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, model: str, team_id: str
) -> tuple[Decimal, Price | None, Rules] | None:
    """(available, price, rules) of a team charge for /v1/check, without locks."""
    row = await driver(session).fetchrow(_READ_TEAM_ACCOUNT, project_id, user_id, model, team_id)
    if row is None:
        return None
    return row["total"] - row["held"], optional_price(row), _team_rules(row)


async def team_is_live(session: AsyncSession, project_id: uuid.UUID, team_id: str) -> bool:
    return await driver(session).fetchval(_TEAM_LIVE, project_id, team_id) is not None


async def only_team(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> str | None:
    """The user's team if they belong to exactly one live team."""
    team_id: str | None = await driver(session).fetchval(_ONLY_TEAM, project_id, user_id)
    return team_id


async def member_cap_usage(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, user_id: str, today: date
) -> list[Any]:
    """The member's team caps, each with what its window has charged and holds."""
    return list(await driver(session).fetch(_MEMBER_CAP_USAGE, project_id, team_id, user_id, today))


async def read_for_check(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, model: str
) -> tuple[Decimal, Price | None, Rules]:
    """(available, price, rules) for /v1/check, without locks; a user that does not exist is
    seen as the new user a usage call would create (on the default tier)."""
    conn = driver(session)
    row = await conn.fetchrow(_READ_ACCOUNT, project_id, user_id, model)
    if row is not None:
        available = row["total"] - row["held"]
    else:
        row = await conn.fetchrow(_DEFAULT_TIER, project_id, model)
        available = row["tier_credits"] or Decimal(0)
    return available, optional_price(row), Rules.from_row(row, has_spend_caps=row["has_spend_caps"])


async def user_exists(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> bool:
    found = await driver(session).fetchval(
        "SELECT 1 FROM users WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL",
        project_id,
        user_id,
    )
    return found is not None


async def pending_count(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> int:
    return int(await driver(session).fetchval(_PENDING_COUNT, project_id, user_id))


async def cap_usage(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, model: str, today: date
) -> list[Any]:
    """The caps that apply to ``model``, each with what its window has spent and holds."""
    return list(await driver(session).fetch(_CAP_USAGE, project_id, user_id, today, model))


def insert(
    *,
    transaction_id: uuid.UUID,
    project_id: uuid.UUID,
    account_id: uuid.UUID,
    user_id: str,
    model: str,
    feature_identifier: str | None,
    status: str,
    reason: str | None,
    hold_amount: Decimal,
    credits_used: Decimal,
    provisional_tokens: dict[str, Any] | None,
    finalized_tokens: dict[str, Any] | None,
    metadata: dict[str, Any],
    expires_at: datetime | None,
    completed_at: datetime | None,
    team_id: str | None = None,
    price_snapshot: dict[str, Any] | None = None,
    job: bool = False,
) -> Write:
    """The insert of a new transaction, as a write to carry with its balance change."""
    args = (
        transaction_id,
        project_id,
        account_id,
        user_id,
        model,
        feature_identifier,
        status,
        reason,
        hold_amount,
        credits_used,
        json_text(provisional_tokens),
        json_text(finalized_tokens),
        json_text(metadata),
        expires_at,
        completed_at,
        team_id,
        json_text(price_snapshot),
        job,
    )
    return Write(_INSERT, args)


def completion(
    project_id: uuid.UUID,
    transaction_id: uuid.UUID,
    *,
    status: str,
    credits_used: Decimal,
    finalized_tokens: dict[str, Any] | None,
    metadata: dict[str, Any],
    late: bool,
    completion_hash: str,
    completion_result: dict[str, Any],
) -> Write:
    """The update recording a completion, as a write to carry with its balance change."""
    args = (
        project_id,
        transaction_id,
        status,
        credits_used,
        json_text(finalized_tokens),
        json_text(metadata),
        late,
        completion_hash,
        json_text(completion_result),
    )
    return Write(_COMPLETE, args)


async def set_expiry(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID, expires_at: datetime
) -> None:
    await driver(session).execute(
        "UPDATE transactions SET expires_at = $3, updated_at = now() "
        "WHERE project_id = $1 AND id = $2",
        project_id,
        transaction_id,
        expires_at,
    )


async def add_refund(
    session: AsyncSession,
    *,
    refund_id: uuid.UUID,
    project_id: uuid.UUID,
    transaction_id: uuid.UUID,
    grant_id: uuid.UUID,
    amount: Decimal,
    reason: str | None,
) -> None:
    conn = driver(session)
    await conn.execute(
        "INSERT INTO refunds (id, project_id, transaction_id, grant_id, amount, reason) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        refund_id,
        project_id,
        transaction_id,
        grant_id,
        amount,
        reason,
    )
    await conn.execute(
        "UPDATE transactions SET refunded_total = refunded_total + $3, updated_at = now() "
        "WHERE project_id = $1 AND id = $2",
        project_id,
        transaction_id,
        amount,
    )


async def lock_due(session: AsyncSession, now: datetime, limit: int) -> list[Any]:
    """Pending transactions past ``expires_at``, each with its account, both locked; rows
    another transaction holds are skipped (a later sweep comes back to them)."""
    return list(await driver(session).fetch(_LOCK_DUE, now, limit))


async def mark_expired(session: AsyncSession, due: list[Any]) -> None:
    """Mark the transactions ``lock_due`` returned as expired."""
    await driver(session).execute(
        "UPDATE transactions AS t SET status = 'expired', updated_at = now() "
        "FROM unnest($1::uuid[], $2::uuid[]) AS d(project_id, id) "
        "WHERE t.project_id = d.project_id AND t.id = d.id",
        [row["project_id"] for row in due],
        [row["id"] for row in due],
    )


async def get(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> Transaction | None:
    stmt = scoped_select(Transaction, project_id).where(Transaction.id == transaction_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_transactions(
    session: AsyncSession,
    project_id: uuid.UUID,
    filters: TransactionFilters,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Transaction]:
    stmt = scoped_select(Transaction, project_id)
    if filters.user_id is not None:
        stmt = stmt.where(Transaction.user_id == filters.user_id)
    if filters.team_id is not None:
        stmt = stmt.where(Transaction.team_id == filters.team_id)
    if filters.status is not None:
        stmt = stmt.where(Transaction.status == filters.status)
    if filters.model is not None:
        stmt = stmt.where(Transaction.model == filters.model)
    if filters.feature_identifier is not None:
        stmt = stmt.where(Transaction.feature_identifier == filters.feature_identifier)
    if filters.created_after is not None:
        stmt = stmt.where(Transaction.created_at >= filters.created_after)
    if filters.created_before is not None:
        stmt = stmt.where(Transaction.created_at < filters.created_before)
    if after is not None:
        stmt = stmt.where(Transaction.id > after)
    stmt = stmt.order_by(Transaction.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())
