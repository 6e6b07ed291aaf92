"""Load for fault tests: start+complete pairs with Idempotency-Keys, every outcome recorded,
then reconciled against the database: each 2xx applied exactly once, each 503 not at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent

TRANSIENT = {
    "database_unavailable",
    "lock_timeout",
    "statement_timeout",
    "serialization_failure",
    "deadlock_detected",
    "pool_timeout",
    "commit_outcome_unknown",
    "account_busy",
}
START = {"model": "m", "provisional_tokens": {"input_tokens": 1000, "output_tokens": 0}}
COMPLETE = {"success": True, "finalized_tokens": {"input_tokens": 500, "output_tokens": 0}}


@dataclass
class Op:
    kind: str  # "start" or "complete"
    key: str
    op_id: str
    path: str
    payload: dict[str, Any]
    status: int
    code: str | None = None
    transaction_id: str | None = None


@dataclass
class Load:
    project: Project
    users: list[str]
    ops: list[Op] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _send(self, kind: str, path: str, op_id: str, payload: dict[str, Any]) -> Op:
        key = f"{kind}-{op_id}"
        r = await self.project.post(path, payload, headers={"Idempotency-Key": key})
        op = Op(kind, key, op_id, path, payload, r.status_code)
        if r.status_code >= 400:
            problem = r.json()
            op.code = problem["code"]
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1, r.headers
        elif kind == "start":
            op.transaction_id = r.json()["transaction_id"]
        self.ops.append(op)
        return op

    async def pair(self, user: str) -> bool:
        """One start and, when it held credits, its complete; True when both succeeded."""
        op_id = uuid.uuid4().hex
        start = await self._send(
            "start",
            "/v1/transactions/start",
            op_id,
            {**START, "user_id": user, "metadata": {"op": op_id}},
        )
        if start.status != 201:
            return False
        done = await self._send(
            "complete", f"/v1/transactions/{start.transaction_id}/complete", op_id, COMPLETE
        )
        return done.status == 200

    async def _loop(self, user: str) -> None:
        while not self.stop.is_set():
            await self.pair(user)

    async def run(self) -> None:
        await asyncio.gather(*(self._loop(u) for u in self.users))

    def statuses(self) -> Counter[tuple[int, str | None]]:
        return Counter((op.status, op.code) for op in self.ops)


async def recovers_within(load: Load, user: str, seconds: float) -> float:
    """Send start+complete pairs until one fully succeeds; returns how long that took."""
    began = time.monotonic()
    while not await load.pair(user):
        assert time.monotonic() - began < seconds, load.statuses()
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def reconcile(load: Load, conn: asyncpg.Connection) -> None:
    """Every acknowledged operation applied exactly once, every 503 zero times; an operation
    whose commit outcome was unknown is retried with its key and then applied exactly once."""
    for op in load.ops:
        assert op.status in (200, 201, 503), (op, "no 500 and no other status")
        if op.status == 503:
            assert op.code in TRANSIENT, op
    for op in [o for o in load.ops if o.code == "commit_outcome_unknown"]:
        await _retry_until_settled(load, op)

    project_id = uuid.UUID(load.project.id)
    rows = await conn.fetch(
        "SELECT id, metadata->>'op' AS op, status FROM transactions WHERE project_id = $1",
        project_id,
    )
    by_op: dict[str, list[Any]] = {}
    for row in rows:
        by_op.setdefault(row["op"], []).append(row)
    usage = Counter(
        r["transaction_id"]
        for r in await conn.fetch(
            "SELECT transaction_id FROM ledger_entries WHERE project_id = $1 AND kind = 'usage'",
            project_id,
        )
    )
    for op in load.ops:
        found = by_op.get(op.op_id, [])
        if op.kind == "start":
            if op.status == 201 or op.code == "commit_outcome_unknown":
                assert len(found) == 1, (op, found)
            else:
                assert found == [], (op, "a 503 start left a transaction", found)
        else:
            (txn,) = found
            if op.status == 200 or op.code == "commit_outcome_unknown":
                assert txn["status"] == "completed", (op, txn)
                assert usage[txn["id"]] == 1, (op, "charged once")
            else:
                assert txn["status"] == "pending", (op, "a 503 complete changed it", txn)
                assert usage[txn["id"]] == 0, op


async def _retry_until_settled(load: Load, op: Op) -> None:
    for _ in range(50):
        r = await load.project.post(op.path, op.payload, headers={"Idempotency-Key": op.key})
        if r.status_code != 503:
            assert r.status_code in (200, 201), r.text
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{op} never settled")


async def verify_all(db: Database) -> None:
    await assert_ledger_consistent(db)


def live_client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
