"""Rate limits through the `limits` library: per API key, per project, and per client address
for failed authentication.

Every limit uses the library's sliding-window counter (two counters per limit, O(1) memory,
smooth at window edges). The counts live in process memory by default (each replica counts on
its own) or in Redis, shared by every replica, when ``CREDITD_API__RATE_LIMIT_STORAGE_URL`` is
set. If Redis cannot be reached, requests are let through (fail open) with a logged warning:
the limits protect capacity, not money, so an outage of the limiter must not become an outage
of the API.
"""

from __future__ import annotations

import inspect
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, SlidingWindowCounterSupport, Storage
from limits.errors import StorageError

from app.core.settings import ApiSettings

log = structlog.get_logger("creditd.ratelimit")

# How long the limiter stays open (skips Redis) after Redis failed, and how often that is logged.
_OPEN_SECONDS = 1.0
_LOG_EVERY_SECONDS = 10.0


class Decision(NamedTuple):  # a tuple: built on every request, three times cheaper
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class LocalStorage(Storage, SlidingWindowCounterSupport):
    """In-process counts for the library's sliding-window counter strategy.

    limits' own ``MemoryStorage`` takes an asyncio lock and schedules an expiry task on every
    call (and hands each key's expiry to a thread), which costs several times more per hit
    than the rest of the rate limiting. This keeps the same windows (numbered from the epoch in
    multiples of the limit's period, as there) in one small list per key. No method awaits, so
    on one event loop each is atomic. Only the sliding-window counter is supported.
    """

    STORAGE_SCHEME = ["async+creditd-local"]
    _SWEEP_SECONDS = 60.0

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        **options: str,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._clock = clock
        # key -> [window number, count in it, count in the window before, period in seconds]
        self._windows: dict[str, list[int]] = {}
        self._next_sweep = clock() + self._SWEEP_SECONDS

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _entry(self, key: str, expiry: int, now: float) -> list[int]:
        window = int(now / expiry)
        entry = self._windows.get(key)
        if entry is None:
            if now >= self._next_sweep:
                self._sweep(now)
            entry = self._windows[key] = [window, 0, 0, expiry]
        elif entry[0] != window:
            previous = entry[1] if entry[0] == window - 1 else 0
            entry[0], entry[1], entry[2] = window, 0, previous
        return entry

    def _sweep(self, now: float) -> None:
        """Forget keys idle for two windows: they count nothing any more."""
        self._next_sweep = now + self._SWEEP_SECONDS
        idle = [k for k, e in self._windows.items() if int(now / e[3]) - e[0] >= 2]
        for key in idle:
            del self._windows[key]

    @staticmethod
    def _previous_ttl(previous: int, expiry: int, now: float) -> float:
        return (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0

    def take(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> tuple[bool, tuple[int, float, int, float]]:
        """``acquire_sliding_window_entry`` and then ``get_sliding_window``, in one step and
        without coroutines (RateLimits' hot path)."""
        now = self._clock()
        entry = self._entry(key, expiry, now)
        previous_ttl = self._previous_ttl(entry[2], expiry, now)
        weighted = entry[2] * previous_ttl / expiry + entry[1]
        taken = amount <= limit and math.floor(weighted) + amount <= limit
        if taken:
            entry[1] += amount
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return taken, (entry[2], previous_ttl, entry[1], current_ttl)

    def window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self._clock()
        entry = self._entry(key, expiry, now)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return entry[2], self._previous_ttl(entry[2], expiry, now), entry[1], current_ttl

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        return self.take(key, limit, expiry, amount)[0]

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.window(key, expiry)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        self._windows.pop(key, None)

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    async def reset(self) -> int | None:
        count = len(self._windows)
        self._windows.clear()
        return count

    async def check(self) -> bool:
        return True

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("LocalStorage supports the sliding-window counter only")

    async def get(self, key: str) -> int:
        raise NotImplementedError("LocalStorage supports the sliding-window counter only")

    async def get_expiry(self, key: str) -> float:
        raise NotImplementedError("LocalStorage supports the sliding-window counter only")


def _redis_storage(settings: ApiSettings) -> tuple[Storage, Any]:
    """limits' Redis storage over a connection pool of ours (so that it can be closed)."""
    from redis.asyncio import ConnectionPool  # noqa: PLC0415 - only with Redis configured
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    url = settings.rate_limit_storage_url
    timeout = settings.rate_limit_storage_timeout_seconds
    pool = ConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One attempt: a request must not wait out redis-py's retries with backoff.
        retry=Retry(NoBackoff(), 0),
    )
    # limits types its client options as scalars; the pool is passed on to redis-py as is.
    client_options: dict[str, Any] = {"connection_pool": pool}
    storage = RedisStorage(
        f"async+{url}",
        implementation="redispy",
        key_prefix=settings.rate_limit_key_prefix,
        wrap_exceptions=True,
        **client_options,
    )
    return storage, pool


# limits wraps every storage method to translate driver errors, and through both base classes
# wraps the sliding-window ones twice; a dict raises no driver errors, so take the plain ones.
for _name in (
    "acquire_sliding_window_entry",
    "get_sliding_window",
    "clear_sliding_window",
    "clear",
    "reset",
    "check",
):
    setattr(LocalStorage, _name, inspect.unwrap(getattr(LocalStorage, _name)))


_MAX_NAMES = 100_000


class _Limit:
    """One configured limit: the library's item and the storage keys of its subjects."""

    __slots__ = ("_names", "amount", "expiry", "item", "kind")

    def __init__(self, spec: str, kind: str) -> None:
        self.item: RateLimitItem = parse(spec)
        self.kind = kind
        self.amount = self.item.amount
        self.expiry = self.item.get_expiry()
        self._names: dict[object, str] = {}

    def name(self, subject: object) -> str:
        """The library's key for ``subject`` (memoised: building it is a third of a hit)."""
        name = self._names.get(subject)
        if name is None:
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            name = self._names[subject] = self.item.key_for(self.kind, str(subject))
        return name


def _stats(limit: _Limit, window: tuple[int, float, int, float]) -> tuple[int, int]:
    """(remaining, seconds until the next unit frees up) of a sliding window, as limits'
    ``SlidingWindowCounterRateLimiter.get_window_stats`` reckons them."""
    previous, previous_ttl, current, current_ttl = window
    expiry = limit.expiry
    reset_in = math.inf
    if previous:
        reset_in = previous_ttl % (expiry / previous)
    if current:
        reset_in = min(reset_in, current_ttl % expiry)
    remaining = limit.amount - math.floor(previous * previous_ttl / expiry + current)
    return max(0, remaining), 1 if reset_in == math.inf else max(1, math.ceil(reset_in))


def _refusal(limit: _Limit, window: tuple[int, float, int, float]) -> Decision:
    """A refused request: ``Retry-After`` (and ``RateLimit-Reset``) is the first whole second at
    which one more request would be admitted, if nothing else arrives meanwhile.

    The sliding-window counter admits one more while ``floor(p * w + c) < limit``, where ``p``
    and ``c`` are the previous and current windows' counts and ``w`` is the share of the
    previous window still overlapping, which falls from 1 to 0 across the current window.
    """
    previous, previous_ttl, current, current_ttl = window
    expiry, amount = limit.expiry, limit.amount
    left = previous_ttl if previous else max(0.0, current_ttl - expiry)  # of the current window
    if current < amount and previous:
        # Within this window, once the previous window's weight has fallen far enough.
        wait = max(0.0, left - (amount - current) * expiry / previous)
    else:
        # In the next window, where this window's count becomes the decaying one.
        wait = left + max(0.0, expiry * (1 - amount / current)) if current else left
    # Strictly after ``wait`` (at it the count is exactly full); the window arithmetic is in
    # floats, so round a hair up rather than promise a second too early.
    return Decision(False, amount, 0, math.floor(wait + 1e-6) + 1)


def _report(
    key: _Limit, own: tuple[int, int], project: _Limit, shared: tuple[int, int]
) -> Decision:
    """An admitted request reports the limit closer to running out."""
    if own[0] <= shared[0]:
        return Decision(True, key.amount, *own)
    return Decision(True, project.amount, *shared)


class RateLimits:
    """The limits of one process, over one storage.

    Hits go straight to the storage's sliding-window operations (what
    ``SlidingWindowCounterRateLimiter.hit`` does, minus rebuilding the key on every call), and
    the window statistics for the headers use the same formula as its ``get_window_stats``.
    """

    def __init__(self, settings: ApiSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._pool: Any = None
        self._local: LocalStorage | None = None
        self.storage: Storage
        if settings.rate_limit_storage_url.startswith("memory://"):
            self.storage = self._local = LocalStorage(clock=clock)
        else:
            self.storage, self._pool = _redis_storage(settings)
        self._windows = cast(SlidingWindowCounterSupport, self.storage)
        self.per_key = _Limit(settings.key_rate_limit, "key")
        self.per_project = _Limit(settings.project_rate_limit, "project")
        self.auth_failures = _Limit(settings.auth_failure_rate_limit, "auth")
        self._open_until = 0.0
        self._next_log = 0.0

    async def hit(self, key_id: uuid.UUID, project_id: uuid.UUID) -> Decision | None:
        """Count one request of a key against its own and its project's limit.

        Returns the decision to report (for the limit closest to exhaustion), or None when the
        storage is unavailable and the request goes through unlimited.
        """
        key, project = self.per_key, self.per_project
        key_name, project_name = key.name(key_id), project.name(project_id)
        if self._local is not None:
            return self._hit_local(self._local, key, key_name, project, project_name)
        if self._open_until and time.monotonic() < self._open_until:
            return None
        windows = self._windows
        try:
            # The key first: a key over its own limit does not use up its project's budget.
            if not await windows.acquire_sliding_window_entry(key_name, key.amount, key.expiry):
                return _refusal(key, await windows.get_sliding_window(key_name, key.expiry))
            if not await windows.acquire_sliding_window_entry(
                project_name, project.amount, project.expiry
            ):
                window = await windows.get_sliding_window(project_name, project.expiry)
                return _refusal(project, window)
            own = await windows.get_sliding_window(key_name, key.expiry)
            shared = await windows.get_sliding_window(project_name, project.expiry)
        except (StorageError, OSError) as exc:
            self._failed(exc)
            return None
        return _report(key, _stats(key, own), project, _stats(project, shared))

    @staticmethod
    def _hit_local(
        local: LocalStorage, key: _Limit, key_name: str, project: _Limit, project_name: str
    ) -> Decision:
        """``hit`` on the in-process storage: the same steps, without a coroutine each."""
        taken, own = local.take(key_name, key.amount, key.expiry)
        if not taken:
            return _refusal(key, own)
        taken, shared = local.take(project_name, project.amount, project.expiry)
        if not taken:
            return _refusal(project, shared)
        return _report(key, _stats(key, own), project, _stats(project, shared))

    async def auth_blocked(self, address: str) -> Decision | None:
        """The refusal for ``address`` once it used up its failed-authentication budget."""
        if self._open_until and time.monotonic() < self._open_until:
            return None
        limit = self.auth_failures
        try:
            window = await self._windows.get_sliding_window(limit.name(address), limit.expiry)
        except (StorageError, OSError) as exc:
            self._failed(exc)
            return None
        return _refusal(limit, window) if _stats(limit, window)[0] <= 0 else None

    async def auth_failed(self, address: str) -> None:
        if self._open_until and time.monotonic() < self._open_until:
            return
        limit = self.auth_failures
        try:
            await self._windows.acquire_sliding_window_entry(
                limit.name(address), limit.amount, limit.expiry
            )
        except (StorageError, OSError) as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._open_until = now + _OPEN_SECONDS
        if now >= self._next_log:
            self._next_log = now + _LOG_EVERY_SECONDS
            log.warning(
                "rate_limit_storage_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                action=f"requests pass unlimited; retrying in {_OPEN_SECONDS:g} s",
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()
