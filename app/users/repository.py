from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.db.models import Account, Tier, Transaction, User
from app.db.scoping import scoped_update
from app.db.session import driver

_USER_WITH_BALANCE = (
    User.id,
    User.tier_id,
    User.metadata_,
    User.created_at,
    Account.total,
    Account.held,
    Tier.features,
)


def _base(project_id: uuid.UUID) -> Any:
    return (
        select(*_USER_WITH_BALANCE)
        .join(Account, Account.id == User.account_id)
        .outerjoin(Tier, (Tier.project_id == User.project_id) & (Tier.id == User.tier_id))
        .where(User.project_id == project_id, User.deleted_at.is_(None))
    )


async def get_with_balance(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> Row[Any] | None:
    return (await session.execute(_base(project_id).where(User.id == user_id))).first()


async def list_with_balance(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Row[Any]]:
    stmt = _base(project_id)
    if after is not None:
        stmt = stmt.where(User.id > after)
    stmt = stmt.order_by(User.id).limit(limit + 1)
    return list((await session.execute(stmt)).all())


async def exists_including_deleted(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> bool:
    stmt = select(exists().where(User.project_id == project_id, User.id == user_id))
    return bool((await session.execute(stmt)).scalar())


async def merge_metadata(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Merge in one statement (concurrent patches of different keys both land); a null value
    removes its key. Returns the merged metadata."""
    kept = {k: v for k, v in changes.items() if v is not None}
    removed = [k for k, v in changes.items() if v is None]
    merged: dict[str, Any] = await driver(session).fetchval(
        "UPDATE users SET metadata = (metadata || $3::jsonb) - $4::text[], updated_at = now() "
        "WHERE project_id = $1 AND id = $2 RETURNING metadata",
        project_id,
        user_id,
        render_json(kept).decode(),
        removed,
    )
    return merged


async def has_pending_transactions(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> bool:
    stmt = select(
        exists().where(
            Transaction.project_id == project_id,
            Transaction.user_id == user_id,
            Transaction.status == "pending",
        )
    )
    return bool((await session.execute(stmt)).scalar())


async def soft_delete(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> None:
    await session.execute(
        scoped_update(User, project_id)
        .where(User.id == user_id)
        .values(deleted_at=func.now(), updated_at=func.now())
    )
