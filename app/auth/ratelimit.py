"""Per-API-key rate limits (per process; replicas each enforce the limit).

GCRA on integer nanoseconds: each key keeps a "theoretical arrival time"; a request is allowed
while that time is at most ``burst - 1`` intervals ahead of now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

_NS = 1_000_000_000


def _ceil_seconds(nanoseconds: int) -> int:
    return -(-nanoseconds // _NS)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int


class RateLimiter:
    def __init__(self, rate_per_second: Decimal, burst: int) -> None:
        self.burst = burst
        self.interval_ns = max(1, int(Decimal(_NS) / rate_per_second))
        self.tolerance_ns = self.interval_ns * (burst - 1)
        self._arrival: dict[object, int] = {}

    def hit(self, key: object) -> Decision:
        now = time.monotonic_ns()
        arrival = max(self._arrival.get(key, now), now)
        ahead = arrival - now
        if ahead > self.tolerance_ns:
            retry = _ceil_seconds(ahead - self.tolerance_ns)
            return Decision(allowed=False, limit=self.burst, remaining=0, reset_seconds=retry)
        arrival += self.interval_ns
        self._arrival[key] = arrival
        remaining = (self.tolerance_ns - (arrival - now)) // self.interval_ns + 1
        return Decision(
            allowed=True,
            limit=self.burst,
            remaining=max(0, remaining),
            reset_seconds=_ceil_seconds(arrival - now),
        )
