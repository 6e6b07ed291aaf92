"""All SQL of provider accounts (one row per project and provider)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ProviderAccount
from app.db.scoping import scoped_delete, scoped_select, scoped_update


async def get(
    session: AsyncSession, project_id: uuid.UUID, provider: str, *, for_update: bool = False
) -> ProviderAccount | None:
    stmt = scoped_select(ProviderAccount, project_id).where(ProviderAccount.provider == provider)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_accounts(session: AsyncSession, project_id: uuid.UUID) -> list[ProviderAccount]:
    stmt = scoped_select(ProviderAccount, project_id).order_by(ProviderAccount.provider)
    return list((await session.execute(stmt)).scalars())


async def insert_new(
    session: AsyncSession, project_id: uuid.UUID, provider: str, values: dict[str, Any]
) -> ProviderAccount | None:
    """Insert the account; None if it exists (also when a concurrent request just made it)."""
    stmt = (
        insert(ProviderAccount)
        .values(project_id=project_id, provider=provider, **values)
        .on_conflict_do_nothing(index_elements=["project_id", "provider"])
        .returning(ProviderAccount)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def update(
    session: AsyncSession, project_id: uuid.UUID, provider: str, values: dict[str, Any]
) -> ProviderAccount:
    stmt = (
        scoped_update(ProviderAccount, project_id)
        .where(ProviderAccount.provider == provider)
        .values(**values, updated_at=func.now())
        .returning(ProviderAccount)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def delete(session: AsyncSession, project_id: uuid.UUID, provider: str) -> bool:
    stmt = (
        scoped_delete(ProviderAccount, project_id)
        .where(ProviderAccount.provider == provider)
        .returning(ProviderAccount.provider)
    )
    return (await session.execute(stmt)).first() is not None


async def lock_all(session: AsyncSession) -> list[ProviderAccount]:
    """Every project's accounts, locked (``creditd rotate-secrets``: operator-wide, unscoped)."""
    stmt = (
        select(ProviderAccount)
        .order_by(ProviderAccount.project_id, ProviderAccount.provider)
        .with_for_update()
    )
    return list((await session.execute(stmt)).scalars())


async def set_ciphertexts(
    session: AsyncSession,
    account: ProviderAccount,
    *,
    credentials: str,
    webhook_secret: str,
    previous_webhook_secret: str | None,
) -> None:
    """Replace the ciphertexts only (same secrets, new key): ``updated_at`` is left alone."""
    stmt = (
        scoped_update(ProviderAccount, account.project_id)
        .where(ProviderAccount.provider == account.provider)
        .values(
            credentials_ciphertext=credentials,
            webhook_secret_ciphertext=webhook_secret,
            previous_webhook_secret_ciphertext=previous_webhook_secret,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)
