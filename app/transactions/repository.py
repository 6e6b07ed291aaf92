"""SQL for usage transactions. Status changes happen only under the owning account's lock."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Account, Refund, Transaction
from app.db.scoping import scoped_columns, scoped_select
from app.transactions.schemas import TransactionFilters


async def get(
    session: AsyncSession, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> Transaction | None:
    stmt = scoped_select(Transaction, project_id).where(Transaction.id == transaction_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def refresh(session: AsyncSession, txn: Transaction) -> Transaction:
    """Re-read a transaction after its account was locked (its status may have moved)."""
    stmt = (
        select(Transaction)
        .where(Transaction.id == txn.id)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def insert_transaction(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(insert(Transaction).values(**values))


async def update_transaction(
    session: AsyncSession, transaction_id: uuid.UUID, values: dict[str, Any]
) -> None:
    await session.execute(
        update(Transaction)
        .where(Transaction.id == transaction_id)
        .values(**values, updated_at=func.now())
    )


async def insert_refund(session: AsyncSession, values: dict[str, Any]) -> None:
    await session.execute(insert(Refund).values(**values))


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


async def lock_accounts_with_expired_holds(
    session: AsyncSession, now: datetime, limit: int
) -> list[Any]:
    """Lock (skipping busy ones) the accounts owning pending transactions past ``expires_at``.

    Locking the account rather than the transaction keeps one lock order everywhere
    (account, then transaction), so the sweeper cannot deadlock with completions.
    """
    due = (
        select(Transaction.account_id)
        .where(Transaction.status == "pending", Transaction.expires_at <= now)
        .order_by(Transaction.expires_at)
        .limit(limit)
    )
    stmt = (
        select(Account.id, Account.project_id, Account.total, Account.held, Account.debt)
        .where(Account.id.in_(due.scalar_subquery()))
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).all())


async def expire_pending(
    session: AsyncSession, account_ids: list[uuid.UUID], now: datetime
) -> list[Any]:
    stmt = (
        update(Transaction)
        .where(
            Transaction.account_id.in_(account_ids),
            Transaction.status == "pending",
            Transaction.expires_at <= now,
        )
        .values(status="expired", updated_at=func.now())
        .returning(
            Transaction.id,
            Transaction.project_id,
            Transaction.account_id,
            Transaction.user_id,
            Transaction.hold_amount,
            Transaction.model,
        )
    )
    return list((await session.execute(stmt)).all())


async def pending_hold_total(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> Decimal:
    stmt = scoped_columns(
        Transaction, project_id, func.coalesce(func.sum(Transaction.hold_amount), 0)
    ).where(Transaction.user_id == user_id, Transaction.status == "pending")
    return Decimal((await session.execute(stmt)).scalar_one())
