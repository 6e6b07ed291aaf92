"""API key → Principal, with a short in-process cache so the hot path skips the key lookup."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import func, select
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
    """Verified keys, so the hot path skips the key lookup.

    Revocations and project changes reach every process through PostgreSQL NOTIFY (see
    ``app/auth/listener.py``), which evicts entries here. An entry is served for ``ttl`` only
    while that channel holds a lease (it proved alive within the last ``fallback_ttl``);
    otherwise entries older than ``fallback_ttl`` are looked up again, so a revoked key stops
    working within ``fallback_ttl`` even when a notification was lost.
    """

    def __init__(
        self,
        ttl_seconds: float,
        fallback_ttl_seconds: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.fallback_ttl = min(fallback_ttl_seconds, ttl_seconds)
        self.clock = clock
        # Bumped by every invalidation: a lookup that raced one is not cached (see put()).
        self.generation = 0
        self._lease_until = -math.inf
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        now = self.clock()
        age = now - entry[1]
        if age < self.fallback_ttl or (age < self.ttl and now < self._lease_until):
            return entry[0]
        return None

    def put(self, key_hash: str, principal: Principal, *, generation: int) -> None:
        """Cache a principal read while ``generation`` was current (else it may be stale)."""
        if self.ttl > 0 and generation == self.generation:
            self._entries[key_hash] = (principal, self.clock())

    def renew_lease(self, seconds: float) -> None:
        """The invalidation channel is alive: serve entries up to ``ttl`` for ``seconds``."""
        self._lease_until = self.clock() + seconds

    def drop_lease(self) -> None:
        self._lease_until = -math.inf

    @property
    def leased(self) -> bool:
        return self.clock() < self._lease_until

    def invalidate_key(self, key_id: uuid.UUID) -> None:
        self.generation += 1
        for key, (principal, _) in list(self._entries.items()):
            if principal.key_id == key_id:
                self._entries.pop(key, None)

    def invalidate_project(self, project_id: uuid.UUID) -> None:
        self.generation += 1
        for key, (principal, _) in list(self._entries.items()):
            if principal.project_id == project_id:
                self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


INVALIDATION_CHANNEL = "creditd_keys"


async def announce_key_change(session: AsyncSession, key_id: uuid.UUID) -> None:
    """Tell every process to forget a key; delivered when the transaction commits."""
    await session.execute(select(func.pg_notify(INVALIDATION_CHANNEL, f"key:{key_id}")))


async def announce_project_change(session: AsyncSession, project_id: uuid.UUID) -> None:
    """Tell every process to forget a project's keys (their cached settings changed)."""
    await session.execute(select(func.pg_notify(INVALIDATION_CHANNEL, f"project:{project_id}")))


def cached_principal(cache: KeyCache, raw_key: str | None) -> Principal | None:
    """The principal of a key this process verified recently, without I/O."""
    return cache.get(hash_api_key(raw_key)) if raw_key else None


async def authenticate(session: AsyncSession, cache: KeyCache, raw_key: str | None) -> Principal:
    if not raw_key:
        raise InvalidApiKey("Send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'.")
    key_hash = hash_api_key(raw_key)
    principal = cache.get(key_hash)
    if principal is None:
        generation = cache.generation
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
        cache.put(key_hash, principal, generation=generation)
    return admit(principal)


def admit(principal: Principal) -> Principal:
    """A verified key, unless it has expired since; binds it to the request's logs."""
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise InvalidApiKey("The API key has expired.")
    structlog.contextvars.bind_contextvars(
        project_id=str(principal.project_id), key_id=str(principal.key_id)
    )
    return principal
