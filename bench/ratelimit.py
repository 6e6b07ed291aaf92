"""Micro-benchmark of the per-request cost of rate limiting and the key cache.

    uv run python -m bench.ratelimit [--redis redis://127.0.0.1:6379/0]

Prints the CPU time (and for Redis the wall time) per request of what `get_principal` does on
the hot path: one `RateLimits.hit` (the key's and the project's limits, and the window
statistics for the RateLimit-* headers), rendering those headers, and one key-cache lookup.
For comparison it runs the same through the library's own strategy and in-memory storage.
Each figure is the best of five rounds (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.auth.ratelimit import RateLimits
from app.auth.service import KeyCache, Principal, cached_principal
from app.core.settings import ApiSettings
from app.projects.schemas import ProjectSettings

ROUNDS = 5
UNLIMITED = {"rate_limit": "100000000/second", "project_rate_limit": "100000000/second"}


async def _per_call(step: Callable[[], Awaitable[object]], calls: int) -> tuple[float, float]:
    """(best CPU us, best wall us) per call over ROUNDS rounds."""
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await step()
        cpu.append((time.process_time() - c) / calls * 1e6)
        wall.append((time.perf_counter() - w) / calls * 1e6)
    return min(cpu), min(wall)


async def main(redis_url: str | None, calls: int) -> None:
    key_id, project_id = uuid.uuid4(), uuid.uuid4()

    limits = RateLimits(ApiSettings(**UNLIMITED))

    async def ours() -> None:
        decision = await limits.hit(key_id, project_id)
        assert decision is not None
        decision.headers()

    print(f"RateLimits.hit + headers, memory:   {(await _per_call(ours, calls))[0]:6.2f} us CPU")

    library = SlidingWindowCounterRateLimiter(MemoryStorage())
    key_item, project_item = parse(UNLIMITED["rate_limit"]), parse(UNLIMITED["project_rate_limit"])
    key, project = str(key_id), str(project_id)

    async def theirs() -> None:
        await library.hit(key_item, "key", key)
        await library.hit(project_item, "project", project)
        await library.get_window_stats(key_item, "key", key)
        await library.get_window_stats(project_item, "project", project)

    cpu, _ = await _per_call(theirs, calls)
    print(f"limits strategy + MemoryStorage:    {cpu:6.2f} us CPU (same work, library storage)")

    cache = KeyCache(60, 1.0)
    cache.renew_lease(3600)
    principal = Principal(project_id, key_id, frozenset({"usage"}), ProjectSettings(), None)
    raw_key = "ck_" + "x" * 43
    cache.put(hashlib.sha256(raw_key.encode()).hexdigest(), principal, generation=0)

    async def lookup() -> None:
        assert cached_principal(cache, raw_key) is principal

    print(f"key cache hit (hash + lookup):      {(await _per_call(lookup, calls))[0]:6.2f} us CPU")

    if redis_url:
        shared = RateLimits(
            ApiSettings(
                **UNLIMITED,
                rate_limit_storage_url=redis_url,
                rate_limit_key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            )
        )

        async def remote() -> None:
            assert await shared.hit(key_id, project_id) is not None

        cpu, wall = await _per_call(remote, max(calls // 100, 100))
        print(f"RateLimits.hit, Redis:              {cpu:6.2f} us CPU, {wall:8.2f} us wall")
        await shared.storage.reset()
        await shared.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="also measure a Redis storage at this URL")
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.calls))
