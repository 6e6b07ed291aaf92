"""SQL for usage transactions.

Lock order everywhere: the transaction row first, then the account row. A transaction's
status, expiry and refunds change only under its row lock; balances only under the account's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.credits.repository import LockedAccount
from app.db.models import Transaction
from app.db.scoping import scoped_select
from app.db.session import driver
from app.events.service import outbox_cte
from app.pricing.service import PRICE_COLUMNS, Price, optional_price, price_lateral
from app.transactions.schemas import TransactionFilters


@dataclass(frozen=True)
class LockedTransaction:
    """A transaction row read ``FOR UPDATE``: valid until the database transaction ends."""

    id: uuid.UUID
    account_id: uuid.UUID
    user_id: str
    model: str
    status: str
    hold_amount: Decimal
    credits_used: Decimal
    refunded_total: Decimal
    provisional_tokens: dict[str, Any] | None
    metadata: dict[str, Any]
    expires_at: datetime | None
    completion_hash: str | None
    completion_result: dict[str, Any] | None
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
    SELECT a.id, a.total, a.held, a.debt, {PRICE_COLUMNS}
    FROM users u JOIN accounts a ON a.id = u.account_id {price_lateral("$1", "$3")}
    WHERE u.project_id = $1 AND u.id = $2 AND u.deleted_at IS NULL
    FOR UPDATE OF a
"""
# Writes carry their outbox event in the same statement.
_INSERT = f"""
    WITH {outbox_cte(16)}
    INSERT INTO transactions (id, project_id, account_id, user_id, model, feature_identifier,
        status, reason, hold_amount, credits_used, provisional_tokens, finalized_tokens,
        metadata, expires_at, completed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""
_COMPLETE = f"""
    WITH {outbox_cte(9)}
    UPDATE transactions
    SET status = $2, credits_used = $3, finalized_tokens = $4, metadata = $5, late = $6,
        completion_hash = $7, completion_result = $8, completed_at = now(), updated_at = now()
    WHERE id = $1
"""
_LOCK_DUE = """
    SELECT id, project_id, account_id, user_id, hold_amount, model
    FROM transactions
    WHERE status = 'pending' AND expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
"""
# Accounts locked in id order, so sweepers working on overlapping accounts cannot deadlock.
_LOCK_ACCOUNTS = """
    SELECT id, project_id, total, held, debt FROM accounts
    WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else render_json(value).decode()


async def lock(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> LockedTransaction | None:
    row = await driver(session).fetchrow(_LOCK, project_id, transaction_id)
    if row is None:
        return None
    return LockedTransaction(**{f: row[f] for f in _TXN_FIELDS}, price=optional_price(row))


async def lock_account(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, model: str
) -> tuple[LockedAccount | None, Price | None]:
    """Lock the user's account (if the user exists) and read the model's price, in one trip.

    Reading and locking only: the credits service still makes every change to the account.
    """
    row = await driver(session).fetchrow(_LOCK_ACCOUNT, project_id, user_id, model)
    if row is None:
        return None, None
    account = LockedAccount(row["id"], project_id, user_id, row["total"], row["held"], row["debt"])
    return account, optional_price(row)


async def insert(
    session: AsyncSession,
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
    event: tuple[Any, ...],
) -> None:
    """Insert a transaction and its outbox event (``events.outbox_args``)."""
    await driver(session).execute(
        _INSERT,
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
        _json(provisional_tokens),
        _json(finalized_tokens),
        _json(metadata),
        expires_at,
        completed_at,
        *event,
    )


async def record_completion(
    session: AsyncSession,
    transaction_id: uuid.UUID,
    *,
    status: str,
    credits_used: Decimal,
    finalized_tokens: dict[str, Any] | None,
    metadata: dict[str, Any],
    late: bool,
    completion_hash: str,
    completion_result: dict[str, Any],
    event: tuple[Any, ...],
) -> None:
    """Record a completion and its outbox event (``events.outbox_args``)."""
    await driver(session).execute(
        _COMPLETE,
        transaction_id,
        status,
        credits_used,
        _json(finalized_tokens),
        _json(metadata),
        late,
        completion_hash,
        _json(completion_result),
        *event,
    )


async def set_expiry(
    session: AsyncSession, transaction_id: uuid.UUID, expires_at: datetime
) -> None:
    await driver(session).execute(
        "UPDATE transactions SET expires_at = $2, updated_at = now() WHERE id = $1",
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
        "UPDATE transactions SET refunded_total = refunded_total + $2, updated_at = now() "
        "WHERE id = $1",
        transaction_id,
        amount,
    )


async def lock_due(session: AsyncSession, now: datetime, limit: int) -> list[Any]:
    """Pending transactions past ``expires_at`` that no other worker is handling."""
    return list(await driver(session).fetch(_LOCK_DUE, now, limit))


async def lock_accounts(session: AsyncSession, account_ids: list[uuid.UUID]) -> list[Any]:
    return list(await driver(session).fetch(_LOCK_ACCOUNTS, account_ids))


async def mark_expired(session: AsyncSession, transaction_ids: list[uuid.UUID]) -> None:
    await driver(session).execute(
        "UPDATE transactions SET status = 'expired', updated_at = now() WHERE id = ANY($1::uuid[])",
        transaction_ids,
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
