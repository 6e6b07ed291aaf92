"""The load generator, run in its own process: `python -m bench.loadgen < spec.json > results.json`.

It drives fixed-duration phases of start→complete pairs or checks over keep-alive connections
and prints one JSON list of PhaseResult on stdout (progress goes to stderr).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop

from bench.cpu import CpuSample
from bench.http import Connection
from bench.stats import OpStats, PhaseResult

TOKENS = {"input_tokens": 100, "output_tokens": 100}
COMPLETE_BODY = {"success": True, "finalized_tokens": {"input_tokens": 50, "output_tokens": 80}}
HOT_USER = "hot"
USAGE_TOKENS = {"input_tokens": 50, "output_tokens": 80}


def user_ids(count: int) -> list[str]:
    """The ids of the seeded many-users population."""
    return [f"u{i:05d}" for i in range(count)]


def large_user_id(i: int) -> str:
    """The id of user `i` of the SQL-seeded large population (`--seed-users`, bench/scale.py)."""
    return f"L{i:07d}"


@dataclass(frozen=True)
class PhaseSpec:
    """One phase: `pairs` (start then complete), `check` or `usage` (one-shot POST /v1/usage),
    over many users or the hot one; `population` > 0: over the first `population` users of the
    SQL-seeded large population instead (bench/scale.py); `prefix` goes before every path (another
    service's variants of the same endpoints, bench/floor.py)."""

    name: str
    kind: str
    clients: int
    hot: bool
    population: int = 0
    keys: bool = True  # a fresh Idempotency-Key (uuid4) on every POST, as the README advises
    prefix: str = ""


@dataclass(frozen=True)
class LoadSpec:
    """Everything the load generator needs, sent as JSON on stdin."""

    port: int
    token: str
    users: int
    duration: float
    warmup: float
    phases: list[PhaseSpec]
    service_pid: int
    postmaster_pid: int | None

    def to_json(self) -> bytes:
        """The JSON form."""
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes) -> LoadSpec:
        """The inverse of to_json."""
        data = orjson.loads(raw)
        return cls(**{**data, "phases": [PhaseSpec(**p) for p in data["phases"]]})


@dataclass
class Recorder:
    """Latencies and error counts of the requests that finish inside the measured window."""

    window_start: float
    window_end: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, op: str, started: float, ok: bool) -> None:
        """Record one request that started at `started` and has just finished."""
        now = time.perf_counter()
        if not self.window_start <= now <= self.window_end:
            return
        if ok:
            self.latencies.setdefault(op, []).append(now - started)
        else:
            self.errors[op] = self.errors.get(op, 0) + 1

    def summary(self, ops: tuple[str, ...]) -> dict[str, OpStats]:
        """Per-operation stats over the window."""
        seconds = self.window_end - self.window_start
        return {
            op: OpStats.from_samples(self.latencies.get(op, []), self.errors.get(op, 0), seconds)
            for op in ops
        }


async def _call(
    conn: Connection, rec: Recorder, op: str, path: str, body: object, keys: bool
) -> dict[str, Any] | None:
    """One timed POST; the decoded body when it succeeded, else None (counted as an error)."""
    key = str(uuid.uuid4()) if keys else None
    started = time.perf_counter()
    try:
        response = await conn.request("POST", path, body, idempotency_key=key)
    except Exception:
        rec.record(op, started, ok=False)
        await asyncio.sleep(0.01)  # do not spin if the service went away
        return None
    rec.record(op, started, ok=response.ok)
    return response.json() if response.ok else None


class LargePopulation:
    """Random users of the SQL-seeded large population, drawn without building a list."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> str:
        return large_user_id(i)


Users = list[str] | LargePopulation


async def pairs_client(
    conn: Connection, rec: Recorder, users: Users, keys: bool, prefix: str = ""
) -> None:
    """Start then complete transactions until the window closes."""
    while time.perf_counter() < rec.window_end:
        body = {"user_id": random.choice(users), "model": "gpt-4o", "provisional_tokens": TOKENS}
        started = await _call(conn, rec, "start", f"{prefix}/v1/transactions/start", body, keys)
        if started is not None:
            path = f"{prefix}/v1/transactions/{started['transaction_id']}/complete"
            await _call(conn, rec, "complete", path, COMPLETE_BODY, keys)


async def usage_client(
    conn: Connection, rec: Recorder, users: Users, keys: bool, prefix: str = ""
) -> None:
    """Record one-shot usage (POST /v1/usage: one charge per request) until the window closes."""
    while time.perf_counter() < rec.window_end:
        body = {"user_id": random.choice(users), "model": "gpt-4o", "tokens": USAGE_TOKENS}
        await _call(conn, rec, "usage", f"{prefix}/v1/usage", body, keys)


async def check_client(
    conn: Connection, rec: Recorder, users: Users, keys: bool, prefix: str = ""
) -> None:
    """Check admission until the window closes."""
    while time.perf_counter() < rec.window_end:
        body = {"user_id": random.choice(users), "model": "gpt-4o", "provisional_tokens": TOKENS}
        await _call(conn, rec, "check", f"{prefix}/v1/check", body, keys)


async def run_phase(spec: LoadSpec, phase: PhaseSpec) -> PhaseResult:
    """Run one phase: warm up, measure for `duration`, then let the clients finish."""
    users: Users = [HOT_USER] if phase.hot else user_ids(spec.users)
    if phase.population:
        users = LargePopulation(phase.population)
    now = time.perf_counter()
    rec = Recorder(now + spec.warmup, now + spec.warmup + spec.duration)
    client = CLIENTS[phase.kind]
    conns = [Connection(spec.port, spec.token) for _ in range(phase.clients)]
    tasks = [
        asyncio.create_task(client(conn, rec, users, phase.keys, phase.prefix)) for conn in conns
    ]
    await asyncio.sleep(spec.warmup)
    before = CpuSample.take(spec.service_pid, spec.postmaster_pid)
    await asyncio.sleep(spec.duration)
    cpu = CpuSample.take(spec.service_pid, spec.postmaster_pid).percent_since(before)
    await asyncio.gather(*tasks)
    for conn in conns:
        await conn.close()
    ops = ("start", "complete") if phase.kind == "pairs" else (phase.kind,)
    return PhaseResult(phase.name, phase.clients, len(users), spec.duration, rec.summary(ops), cpu)


CLIENTS = {"pairs": pairs_client, "check": check_client, "usage": usage_client}


async def run(spec: LoadSpec) -> list[PhaseResult]:
    """Run every phase in order."""
    results = []
    for phase in spec.phases:
        result = await run_phase(spec, phase)
        print(f"  {phase.name}: {result.rps:.0f} req/s, {result.errors} errors", file=sys.stderr)
        results.append(result)
    return results


def main() -> None:
    """Read the spec from stdin, write the results to stdout."""
    spec = LoadSpec.from_json(sys.stdin.buffer.read())
    results = uvloop.run(run(spec))
    sys.stdout.buffer.write(orjson.dumps([r.to_json() for r in results]))


if __name__ == "__main__":
    main()
