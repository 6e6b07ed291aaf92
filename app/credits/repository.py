"""All SQL that touches accounts, grants and the ledger. Only the credits service calls it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.db.models import Account, Grant, LedgerEntry, User
from app.db.scoping import scoped_select


@dataclass
class LockedAccount:
    """An account row read ``FOR UPDATE``: valid until the transaction ends."""

    id: uuid.UUID
    project_id: uuid.UUID
    user_id: str
    total: Decimal
    held: Decimal
    debt: Decimal

    @property
    def available(self) -> Decimal:
        return self.total - self.held

    @property
    def grant_balance(self) -> Decimal:
        return self.total + self.debt


_ACCOUNT_COLUMNS = (Account.id, Account.total, Account.held, Account.debt)


async def lock_for_user(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> LockedAccount | None:
    stmt = (
        select(*_ACCOUNT_COLUMNS)
        .join(User, User.account_id == Account.id)
        .where(User.project_id == project_id, User.id == user_id, User.deleted_at.is_(None))
        .with_for_update(of=Account)
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    return LockedAccount(row.id, project_id, user_id, row.total, row.held, row.debt)


async def lock_by_id(
    session: AsyncSession, project_id: uuid.UUID, account_id: uuid.UUID, user_id: str
) -> LockedAccount:
    stmt = (
        select(*_ACCOUNT_COLUMNS)
        .where(Account.id == account_id, Account.project_id == project_id)
        .with_for_update()
    )
    row = (await session.execute(stmt)).one()
    return LockedAccount(row.id, project_id, user_id, row.total, row.held, row.debt)


async def insert_user(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    user_id: str,
    account_id: uuid.UUID,
    tier_id: str | None,
    metadata: dict[str, Any],
) -> bool:
    """Insert a user and its account; False if the id exists (even concurrently inserted)."""
    result = await session.execute(
        text(
            "INSERT INTO users (project_id, id, account_id, tier_id, metadata) "
            "VALUES (:p, :u, :a, :t, CAST(:m AS jsonb)) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"p": project_id, "u": user_id, "a": account_id, "t": tier_id, "m": _json(metadata)},
    )
    if result.first() is None:
        return False
    await session.execute(insert(Account).values(id=account_id, project_id=project_id))
    return True


def _json(value: dict[str, Any]) -> str:
    return render_json(value).decode()


async def save_account(session: AsyncSession, account: LockedAccount) -> None:
    await session.execute(
        update(Account)
        .where(Account.id == account.id)
        .values(total=account.total, held=account.held, debt=account.debt, updated_at=func.now())
    )


async def insert_ledger(
    session: AsyncSession,
    account: LockedAccount,
    *,
    kind: str,
    amount: Decimal,
    held_amount: Decimal,
    transaction_id: uuid.UUID | None = None,
    grant_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> int:
    stmt = (
        insert(LedgerEntry)
        .values(
            project_id=account.project_id,
            account_id=account.id,
            user_id=account.user_id,
            kind=kind,
            amount=amount,
            held_amount=held_amount,
            total_after=account.total,
            held_after=account.held,
            transaction_id=transaction_id,
            grant_id=grant_id,
            reason=reason,
        )
        .returning(LedgerEntry.id)
    )
    return int((await session.execute(stmt)).scalar_one())


async def insert_grant(
    session: AsyncSession,
    account: LockedAccount,
    *,
    grant_id: uuid.UUID,
    amount: Decimal,
    remaining: Decimal,
    source: str,
    reason: str | None,
    expires_at: datetime | None,
    transaction_id: uuid.UUID | None,
) -> Grant:
    stmt = (
        insert(Grant)
        .values(
            id=grant_id,
            project_id=account.project_id,
            account_id=account.id,
            user_id=account.user_id,
            amount=amount,
            remaining=remaining,
            source=source,
            reason=reason,
            expires_at=expires_at,
            transaction_id=transaction_id,
        )
        .returning(Grant)
    )
    return (await session.execute(stmt)).scalar_one()


# Burn ``amount`` from the account's grants: soonest expiry first (no expiry last), then oldest.
_BURN = text(
    """
    WITH ordered AS (
        SELECT id, remaining,
               sum(remaining) OVER (ORDER BY expires_at ASC NULLS LAST, created_at, id) AS running
        FROM grants
        WHERE account_id = :account_id AND remaining > 0
    ), take AS (
        SELECT id, LEAST(remaining, :amount - (running - remaining)) AS used
        FROM ordered
        WHERE running - remaining < :amount
    )
    UPDATE grants AS g SET remaining = g.remaining - take.used
    FROM take WHERE g.id = take.id
    RETURNING take.used
    """
)


async def burn_grants(session: AsyncSession, account_id: uuid.UUID, amount: Decimal) -> Decimal:
    """Take up to ``amount`` from grant remainders; returns how much was taken."""
    rows = await session.execute(_BURN, {"account_id": account_id, "amount": amount})
    return sum((r[0] for r in rows), Decimal(0))


async def list_grants(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Grant]:
    stmt = scoped_select(Grant, project_id).where(Grant.user_id == user_id)
    if after is not None:
        stmt = stmt.where(Grant.id > after)
    stmt = stmt.order_by(Grant.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def list_ledger(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, *, limit: int, after: int | None
) -> list[LedgerEntry]:
    stmt = scoped_select(LedgerEntry, project_id).where(LedgerEntry.user_id == user_id)
    if after is not None:
        stmt = stmt.where(LedgerEntry.id > after)
    stmt = stmt.order_by(LedgerEntry.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())
