"""API keys: generated here, shown once, stored only as a hash."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import announce_key_change
from app.core.clock import utcnow
from app.core.errors import ExpiryInPast, NotFound
from app.core.ids import uuid7
from app.core.security import generate_api_key, hash_api_key, key_prefix
from app.db.models import ApiKey
from app.db.scoping import scoped_select, scoped_update


class ApiKeyNotFound(NotFound):
    slug = "api_key_not_found"
    title = "No such API key"


async def create(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    if expires_at is not None and expires_at <= utcnow():
        raise ExpiryInPast()
    secret = generate_api_key()
    stmt = (
        insert(ApiKey)
        .values(
            id=uuid7(),
            project_id=project_id,
            name=name,
            prefix=key_prefix(secret),
            key_hash=hash_api_key(secret),
            scopes=sorted(set(scopes)),
            expires_at=expires_at,
        )
        .returning(ApiKey)
    )
    return (await session.execute(stmt)).scalar_one(), secret


async def list_keys(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[ApiKey]:
    stmt = scoped_select(ApiKey, project_id)
    if after is not None:
        stmt = stmt.where(ApiKey.id > after)
    return list((await session.execute(stmt.order_by(ApiKey.id).limit(limit + 1))).scalars())


async def revoke(session: AsyncSession, project_id: uuid.UUID, key_id: uuid.UUID) -> None:
    result = await session.execute(
        scoped_update(ApiKey, project_id)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise ApiKeyNotFound()
    await announce_key_change(session, key_id)


async def project_of(session: AsyncSession, secret: str) -> uuid.UUID | None:
    """The project of a live (not revoked, not expired) key, or None."""
    stmt = select(ApiKey.project_id).where(
        ApiKey.key_hash == hash_api_key(secret),
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()),
    )
    return (await session.execute(stmt)).scalar_one_or_none()
