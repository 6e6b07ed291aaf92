"""The key cache: evicted through LISTEN/NOTIFY, bounded by a short TTL when that channel is down.

"Another process" here is a second app in this process with its own cache, listener and engine
(tests/concurrency/test_processes.py does the same with real server processes).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.listener import KeyCacheListener
from app.auth.service import KeyCache, Principal
from app.core.settings import Settings
from app.db.session import Database
from app.main import create_app
from app.projects.schemas import ProjectSettings
from tests.conftest import Project


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _principal() -> Principal:
    return Principal(
        project_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        scopes=frozenset({"read"}),
        settings=ProjectSettings(),
        expires_at=None,
    )


def test_cached_keys_live_the_full_ttl_only_while_the_listener_holds_a_lease() -> None:
    clock = FakeClock()
    cache = KeyCache(60, 1.0, clock=clock)
    principal = _principal()
    cache.put("h", principal, generation=cache.generation)
    clock.now += 0.9
    assert cache.get("h") is principal  # younger than the fallback TTL: always served
    clock.now += 0.2
    assert cache.get("h") is None  # no lease: older entries are looked up again

    cache.renew_lease(1.0)
    assert cache.get("h") is principal  # under a lease: up to the full TTL
    clock.now += 1.1
    assert cache.get("h") is None  # the lease ran out (no ping answered)
    cache.renew_lease(1.0)
    clock.now += 60
    cache.renew_lease(1.0)
    assert cache.get("h") is None  # past the full TTL


def test_a_lookup_that_raced_an_invalidation_is_not_cached() -> None:
    cache = KeyCache(60, 1.0)
    principal = _principal()
    generation = cache.generation  # the lookup starts...
    cache.invalidate_key(uuid.uuid4())  # ...a revocation is heard meanwhile...
    cache.put("h", principal, generation=generation)  # ...and its result may predate it
    assert cache.get("h") is None
    cache.put("h", principal, generation=cache.generation)
    assert cache.get("h") is principal


def test_invalidations_evict_by_key_and_by_project() -> None:
    cache = KeyCache(60, 1.0)
    one, two = _principal(), _principal()
    cache.put("one", one, generation=cache.generation)
    cache.put("two", two, generation=cache.generation)
    cache.invalidate_key(one.key_id)
    assert cache.get("one") is None
    assert cache.get("two") is two
    cache.invalidate_project(two.project_id)
    assert cache.get("two") is None


def _hash(project_key: str) -> str:
    return hashlib.sha256(project_key.encode()).hexdigest()


_LONG_CACHE = {"key_cache_ttl_seconds": 60.0, "key_cache_fallback_ttl_seconds": 1.0}


@asynccontextmanager
async def _other_process(
    settings: Settings, *, listening: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A second app with a one-minute key cache, with (or without) its lifespan and listener."""
    other = create_app(
        settings.model_copy(update={"api": settings.api.model_copy(update=_LONG_CACHE)})
    )
    transport = httpx.ASGITransport(app=other)
    async with httpx.AsyncClient(transport=transport, base_url="http://other") as client:
        if listening:
            async with other.router.lifespan_context(other):
                await _wait_for_lease(other)
                yield other, client
        else:
            yield other, client


async def _wait_for_lease(other: FastAPI) -> None:
    cache: KeyCache = other.state.key_cache
    for _ in range(600):
        if cache.leased:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the listener never connected")


async def _new_key(project: Project) -> tuple[str, dict[str, str]]:
    r = await project.post("/v1/api-keys", {"name": "k", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    return r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}


async def _seconds_until_refused(client: httpx.AsyncClient, headers: dict[str, str]) -> float:
    began = time.monotonic()
    while time.monotonic() - began < 5:
        r = await client.get("/v1/project", headers=headers)
        if r.status_code == 401:
            return time.monotonic() - began
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.02)
    raise AssertionError("the revoked key still worked after 5 s")


async def test_a_revocation_evicts_the_key_from_another_process_cache(
    settings: Settings, project: Project
) -> None:
    key_id, headers = await _new_key(project)
    async with _other_process(settings) as (other, client):
        assert (await client.get("/v1/project", headers=headers)).status_code == 200
        assert other.state.key_cache.get(_hash(headers["Authorization"][7:])) is not None
        assert (await project.delete(f"/v1/api-keys/{key_id}")).status_code == 204
        assert await _seconds_until_refused(client, headers) < 1.0


async def test_the_listener_reconnects_after_its_connection_is_killed(
    settings: Settings, project: Project, db: Database
) -> None:
    key_id, headers = await _new_key(project)
    async with _other_process(settings) as (other, client):
        listener: KeyCacheListener = other.state.key_listener
        killed = listener.backend_pid
        async with db.transaction() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})
        for _ in range(600):
            if listener.backend_pid not in (None, killed) and other.state.key_cache.leased:
                break
            await asyncio.sleep(0.05)
        assert listener.backend_pid not in (None, killed)

        assert (await client.get("/v1/project", headers=headers)).status_code == 200
        assert (await project.delete(f"/v1/api-keys/{key_id}")).status_code == 204
        assert await _seconds_until_refused(client, headers) < 1.0


async def test_project_setting_changes_reach_another_process(
    settings: Settings, project: Project
) -> None:
    async with _other_process(settings) as (other, client):
        assert (await client.get("/v1/project", headers=project.headers)).status_code == 200
        cache: KeyCache = other.state.key_cache
        key_hash = _hash(project.key)
        assert cache.get(key_hash) is not None
        r = await project.patch("/v1/project", {"settings": {"auto_create_users": False}})
        assert r.status_code == 200
        for _ in range(100):
            if cache.get(key_hash) is None:
                break
            await asyncio.sleep(0.01)
        assert cache.get(key_hash) is None
        assert (await client.get("/v1/project", headers=project.headers)).status_code == 200
        cached = cache.get(key_hash)
        assert cached is not None
        assert cached.settings.auto_create_users is False


async def test_without_a_listener_a_silently_revoked_key_works_at_most_the_fallback_ttl(
    settings: Settings, app: FastAPI, project: Project, db: Database
) -> None:
    key_id, headers = await _new_key(project)
    async with _other_process(settings, listening=False) as (other, client):
        other.state.db = app.state.db  # no lifespan: no listener, the suite's engine
        assert (await client.get("/v1/project", headers=headers)).status_code == 200
        assert other.state.key_cache.get(_hash(headers["Authorization"][7:])) is not None
        # Revoked behind the service's back: no notification is sent at all.
        async with db.transaction() as session:
            await session.execute(
                text("UPDATE api_keys SET revoked_at = now() WHERE id = :id"),
                {"id": uuid.UUID(key_id)},
            )
        # Polling granularity and a loaded machine on top of the TTL.
        fallback = _LONG_CACHE["key_cache_fallback_ttl_seconds"]
        assert await _seconds_until_refused(client, headers) < fallback + 0.5
