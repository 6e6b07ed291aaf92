"""LISTEN for key and project changes and evict them from this process's key cache.

Revoking a key (or changing a project's settings) runs ``pg_notify('creditd_keys', ...)`` in
the same transaction, so every process hears of it when it commits. Each process keeps one
dedicated connection for this, outside the pool. The connection proves it is alive with a ping
every ``lease / 2`` seconds; each answer renews the cache's lease, during which cached keys are
served for their full TTL. When the connection drops or stops answering, the lease runs out
within ``lease`` seconds, and from then on cached keys are re-checked after ``lease`` seconds,
so a revocation whose notification was lost still takes effect within that bound. A new
connection starts from an empty cache: notifications sent while it was away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import make_url

from app.auth.service import INVALIDATION_CHANNEL, KeyCache
from app.core.settings import to_async_url

log = structlog.get_logger("creditd.auth")

LISTENER_UP = Gauge(
    "creditd_key_cache_listener_up",
    "1 while this process listens for key revocations (its key cache holds a lease)",
)
INVALIDATIONS = Counter(
    "creditd_key_cache_invalidations_total", "Key and project changes heard from the database"
)

_MAX_BACKOFF_SECONDS = 5.0


def listener_dsn(database_url: str) -> str:
    """The asyncpg DSN of the app's database URL (same host, credentials and options)."""
    url = make_url(to_async_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class KeyCacheListener:
    def __init__(self, database_url: str, cache: KeyCache) -> None:
        self.dsn = listener_dsn(database_url)
        self.cache = cache
        # The lease outlives two missed pings by a little: one slow answer does not drop it.
        self.lease = max(cache.fallback_ttl, 0.2)
        self.ping_every = self.lease / 2
        self.backend_pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key-cache-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: fall back to the short TTL, log, retry
                if self.backend_pid is not None:  # it was up until now: reconnect promptly
                    backoff, self.backend_pid = 0.1, None
                log.warning(
                    "key_cache_listener_down",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_seconds=backoff,
                    cache_ttl_seconds=self.cache.fallback_ttl,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def _listen(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn,
            timeout=10,
            server_settings={"application_name": "creditd-key-listener"},
        )
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(INVALIDATION_CHANNEL, self._on_notify)
            # Whatever changed while nobody listened is unknown: start from an empty cache.
            self.cache.clear()
            self.backend_pid = conn.get_server_pid()
            log.info("key_cache_listener_up", backend_pid=self.backend_pid)
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation
            # that arrives as its awaitable completes, and stop() would then wait forever.
            while not lost.is_set():
                async with asyncio.timeout(self.lease):
                    await conn.fetchval("SELECT 1")
                # Notifications sent before this answer were handled before it (one socket).
                self.cache.renew_lease(self.lease)
                LISTENER_UP.set(1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ping_every):
                        await lost.wait()
            raise ConnectionError("listener connection closed")
        finally:
            self.cache.drop_lease()
            LISTENER_UP.set(0)
            conn.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        INVALIDATIONS.inc()
        kind, _, ident = payload.partition(":")
        try:
            target = uuid.UUID(ident)
        except ValueError:
            self.cache.clear()  # not ours to parse: forget everything, to be safe
            return
        if kind == "key":
            self.cache.invalidate_key(target)
        elif kind == "project":
            self.cache.invalidate_project(target)
        else:
            self.cache.clear()
