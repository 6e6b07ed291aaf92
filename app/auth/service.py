"""API key → Principal, with a short in-process cache so the hot path skips the key lookup."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.exceptions import InvalidApiKey
from app.core.clock import utcnow
from app.core.security import hash_api_key
from app.db.models import ApiKey, Project
from app.projects.schemas import ProjectSettings

SCOPES = ("admin", "write", "read", "usage")


@dataclass(frozen=True)
class Principal:
    project_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]
    settings: ProjectSettings
    expires_at: datetime | None

    def has_any(self, scopes: frozenset[str]) -> bool:
        return "admin" in self.scopes or not self.scopes.isdisjoint(scopes)


class KeyCache:
    """Verified keys for ``ttl_seconds``; revocations and setting changes invalidate locally."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl > 0:
            self._entries[key_hash] = (principal, time.monotonic() + self.ttl)

    def invalidate_project(self, project_id: uuid.UUID) -> None:
        for key, (principal, _) in list(self._entries.items()):
            if principal.project_id == project_id:
                self._entries.pop(key, None)


async def authenticate(session: AsyncSession, cache: KeyCache, raw_key: str | None) -> Principal:
    if not raw_key:
        raise InvalidApiKey("Send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'.")
    key_hash = hash_api_key(raw_key)
    principal = cache.get(key_hash)
    if principal is None:
        row = (
            await session.execute(
                select(ApiKey, Project.settings)
                .join(Project, Project.id == ApiKey.project_id)
                .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).first()
        if row is None:
            raise InvalidApiKey()
        key, settings = row
        principal = Principal(
            project_id=key.project_id,
            key_id=key.id,
            scopes=frozenset(key.scopes),
            settings=ProjectSettings.model_validate(settings),
            expires_at=key.expires_at,
        )
        cache.put(key_hash, principal)
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise InvalidApiKey("The API key has expired.")
    structlog.contextvars.bind_contextvars(
        project_id=str(principal.project_id), key_id=str(principal.key_id)
    )
    return principal
