from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import IdempotencyKey
from app.db.scoping import scoped_select


async def try_lock(session: AsyncSession, project_id: uuid.UUID, key: str) -> bool:
    """A transaction-scoped advisory lock on (project, key): held until commit or rollback."""
    result = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"idem:{project_id}:{key}"},
    )
    return bool(result.scalar_one())


async def get_live(session: AsyncSession, project_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    stmt = scoped_select(IdempotencyKey, project_id).where(
        IdempotencyKey.key == key, IdempotencyKey.expires_at > func.now()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def store(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    status_code: int,
    headers: dict[str, Any],
    body: bytes,
    expires_at: datetime,
) -> None:
    values = {
        "project_id": project_id,
        "key": key,
        "method": method,
        "path": path,
        "request_hash": request_hash,
        "status_code": status_code,
        "headers": headers,
        "body": body,
        "expires_at": expires_at,
    }
    stmt = insert(IdempotencyKey).values(**values)
    # An expired row for the same key is replaced; a live one cannot exist (we hold the lock).
    stmt = stmt.on_conflict_do_update(
        index_elements=[IdempotencyKey.project_id, IdempotencyKey.key],
        set_={k: stmt.excluded[k] for k in values if k not in ("project_id", "key")}
        | {"created_at": func.now()},
    )
    await session.execute(stmt)


async def purge_expired(session: AsyncSession, *, limit: int) -> int:
    victims = (
        select(IdempotencyKey.project_id, IdempotencyKey.key)
        .where(IdempotencyKey.expires_at <= func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(IdempotencyKey).where(
            func.row(IdempotencyKey.project_id, IdempotencyKey.key).in_(victims.scalar_subquery())
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
