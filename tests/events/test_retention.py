"""Event retention: events past retention go (with their deliveries and attempts) unless
fan-out has not passed them or a delivery of theirs is pending.

Against a database of its own, so the tests can set the fan-out cursor; the last test runs on
the shared one, next to the ledger, through the API.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from app.cli import run_migrations
from app.core.clock import utcnow
from app.core.ids import uuid7, uuid7_floor
from app.core.settings import DatabaseSettings
from app.db.engine import create_engine
from app.db.exceptions import LockTimeout
from app.db.session import Database, driver
from app.events import retention
from app.events.retention import PruneBatch, prune_events_once
from tests.conftest import Project, assert_ledger_consistent
from tests.fixtures.database import fresh_database

DAYS = 30
OLD = timedelta(days=DAYS + 10)
FANNED_OUT = 100  # a fanout_xid below the cursor the tests set
CURSOR_XID = 500
NOT_FANNED_OUT = 900


def uuid7_at(at: datetime) -> uuid.UUID:
    """A random UUIDv7 of the instant ``at`` (as the app would have made then)."""
    counter_and_random = (secrets.randbits(12) << 64) | secrets.randbits(62)
    return uuid.UUID(int=uuid7_floor(at).int | counter_and_random)


@pytest.fixture(scope="module")
def retention_url() -> Iterator[str]:
    with fresh_database() as (url, _):
        run_migrations(url)
        yield url


@pytest.fixture(scope="module")
async def rdb(retention_url: str) -> AsyncIterator[Database]:
    database = Database(create_engine(DatabaseSettings(url=retention_url), pool_size=5))
    yield database
    await database.dispose()


async def _run(rdb: Database, sql: str, *args: object) -> list[asyncpg.Record]:
    async with rdb.transaction() as session:
        return list(await driver(session).fetch(sql, *args))


async def _new_project(rdb: Database) -> uuid.UUID:
    pid = uuid.uuid4()
    await _run(rdb, "INSERT INTO projects (id, name) VALUES ($1, 'retention')", pid)
    return pid


@pytest.fixture
async def pid(rdb: Database) -> uuid.UUID:
    """A new project, with fan-out done up to (CURSOR_XID, nil)."""
    await _cursor(rdb, CURSOR_XID, uuid.UUID(int=0))
    return await _new_project(rdb)


async def _cursor(rdb: Database, xid: int, event_id: uuid.UUID | None) -> None:
    await _run(
        rdb, "UPDATE webhook_fanout_cursor SET fanout_xid = $1, event_id = $2", xid, event_id
    )


async def _event(
    rdb: Database, pid: uuid.UUID, age: timedelta, *, xid: int | None = FANNED_OUT
) -> uuid.UUID:
    at = utcnow() - age
    event_id = uuid7_at(at)
    await _run(
        rdb,
        "INSERT INTO events (id, project_id, type, user_id, data, created_at, fanout_xid)"
        " VALUES ($1, $2, 'credits.granted', 'u1', '{}', $3, $4)",
        event_id,
        pid,
        at,
        xid,
    )
    return event_id


async def _endpoint(rdb: Database, pid: uuid.UUID) -> uuid.UUID:
    endpoint_id = uuid7()
    await _run(
        rdb,
        "INSERT INTO webhook_endpoints (id, project_id, url, event_types, secret_ciphertext)"
        " VALUES ($1, $2, 'https://example.test/hook', '{*}', 'not-a-real-ciphertext')",
        endpoint_id,
        pid,
    )
    return endpoint_id


async def _delivery(
    rdb: Database, pid: uuid.UUID, event_id: uuid.UUID, endpoint_id: uuid.UUID, status: str
) -> uuid.UUID:
    """A delivery of ``status`` with one attempt behind it."""
    delivery_id = uuid7()
    await _run(
        rdb,
        "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, status, attempts,"
        " next_attempt_at) VALUES ($1, $2, $3, $4, $5, 1,"
        " CASE WHEN $5 = 'pending' THEN now() + interval '1 hour' END)",
        delivery_id,
        pid,
        endpoint_id,
        event_id,
        status,
    )
    await _run(
        rdb,
        "INSERT INTO webhook_attempts (id, project_id, delivery_id, endpoint_id, event_id,"
        " attempt, status_code, latency_ms, succeeded) VALUES ($1, $2, $3, $4, $5, 1, $6, 12, $7)",
        uuid7(),
        pid,
        delivery_id,
        endpoint_id,
        event_id,
        200 if status == "succeeded" else 500,
        status == "succeeded",
    )
    return delivery_id


async def _event_ids(rdb: Database, pid: uuid.UUID) -> set[uuid.UUID]:
    rows = await _run(rdb, "SELECT id FROM events WHERE project_id = $1", pid)
    return {r["id"] for r in rows}


async def _count(rdb: Database, table: str, pid: uuid.UUID) -> int:
    rows = await _run(rdb, f"SELECT count(*) AS n FROM {table} WHERE project_id = $1", pid)
    return int(rows[0]["n"])


async def _prune(
    rdb: Database,
    batch_size: int = 100,
    *,
    dry_run: bool = False,
    on_batch: Callable[[PruneBatch], None] | None = None,
) -> int:
    return await prune_events_once(
        rdb, retention_days=DAYS, batch_size=batch_size, dry_run=dry_run, on_batch=on_batch
    )


# --- what goes, what stays ------------------------------------------------------------------


async def test_old_events_with_finished_deliveries_go_with_their_deliveries_and_attempts(
    rdb: Database, pid: uuid.UUID
) -> None:
    endpoint = await _endpoint(rdb, pid)
    for status in ("succeeded", "failed", "canceled"):
        await _delivery(rdb, pid, await _event(rdb, pid, OLD), endpoint, status)
    await _event(rdb, pid, OLD)  # no delivery at all
    await _event(rdb, pid, OLD, xid=None)  # never meant for fan-out

    assert await _prune(rdb) >= 5
    assert await _event_ids(rdb, pid) == set()
    assert await _count(rdb, "webhook_deliveries", pid) == 0
    assert await _count(rdb, "webhook_attempts", pid) == 0
    assert await _count(rdb, "webhook_endpoints", pid) == 1  # the endpoint stays


async def test_events_younger_than_the_retention_are_kept(rdb: Database, pid: uuid.UUID) -> None:
    endpoint = await _endpoint(rdb, pid)
    young = await _event(rdb, pid, timedelta(days=DAYS - 1))
    await _delivery(rdb, pid, young, endpoint, "succeeded")
    old = await _event(rdb, pid, timedelta(days=DAYS, hours=1))

    await _prune(rdb)

    assert await _event_ids(rdb, pid) == {young}
    assert old not in await _event_ids(rdb, pid)
    assert await _count(rdb, "webhook_attempts", pid) == 1


async def test_an_old_event_with_a_pending_delivery_is_kept_with_all_its_deliveries(
    rdb: Database, pid: uuid.UUID
) -> None:
    done, waiting = await _endpoint(rdb, pid), await _endpoint(rdb, pid)
    event = await _event(rdb, pid, OLD)
    await _delivery(rdb, pid, event, done, "succeeded")
    await _delivery(rdb, pid, event, waiting, "pending")
    test_event = await _event(rdb, pid, OLD, xid=None)  # webhook.test: one pending delivery
    await _delivery(rdb, pid, test_event, waiting, "pending")

    await _prune(rdb)

    assert await _event_ids(rdb, pid) == {event, test_event}
    assert await _count(rdb, "webhook_deliveries", pid) == 3
    assert await _count(rdb, "webhook_attempts", pid) == 3


async def test_old_events_fan_out_has_not_passed_are_kept(rdb: Database, pid: uuid.UUID) -> None:
    ahead = await _event(rdb, pid, OLD, xid=NOT_FANNED_OUT)
    # Three events of one transaction, the cursor on the middle one: fan-out has handled the
    # first and the cursor's own; only strictly before the cursor goes.
    same_xid = sorted([await _event(rdb, pid, OLD, xid=CURSOR_XID) for _ in range(3)])
    await _cursor(rdb, CURSOR_XID, same_xid[1])
    behind = await _event(rdb, pid, OLD, xid=CURSOR_XID - 1)

    await _prune(rdb)

    assert await _event_ids(rdb, pid) == {ahead, same_xid[1], same_xid[2]}
    assert behind not in await _event_ids(rdb, pid)


async def test_nothing_for_fan_out_goes_before_fan_out_has_started(
    rdb: Database, pid: uuid.UUID
) -> None:
    await _cursor(rdb, 0, None)  # as migrated: fan-out has not run yet
    kept = await _event(rdb, pid, OLD, xid=FANNED_OUT)
    await _event(rdb, pid, OLD, xid=None)

    await _prune(rdb)

    assert await _event_ids(rdb, pid) == {kept}


# --- batches and projects ----------------------------------------------------------------------


async def test_batches_smaller_than_the_backlog_prune_it_all_in_one_run(
    rdb: Database, pid: uuid.UUID
) -> None:
    endpoint = await _endpoint(rdb, pid)
    for i in range(11):
        event = await _event(rdb, pid, OLD + timedelta(minutes=i))
        if i % 2:
            await _delivery(rdb, pid, event, endpoint, "succeeded")
    batches: list[PruneBatch] = []

    await _prune(rdb, batch_size=3, on_batch=batches.append)

    ours = [b for b in batches if b.project_id == pid]
    assert [b.deleted for b in ours] == [3, 3, 3, 2]
    assert all(b.scanned <= 3 for b in batches)
    assert await _event_ids(rdb, pid) == set()
    assert await _count(rdb, "webhook_attempts", pid) == 0
    assert await _prune(rdb, batch_size=3) == 0


async def test_events_kept_at_the_start_of_the_range_do_not_stall_the_batches(
    rdb: Database, pid: uuid.UUID
) -> None:
    endpoint = await _endpoint(rdb, pid)
    kept = set()
    for i in range(5):  # the oldest five stay: each has a pending delivery
        kept.add(event := await _event(rdb, pid, OLD + timedelta(days=1, minutes=i)))
        await _delivery(rdb, pid, event, endpoint, "pending")
    for i in range(3):
        await _event(rdb, pid, OLD - timedelta(minutes=i))
    batches: list[PruneBatch] = []

    await _prune(rdb, batch_size=2, on_batch=batches.append)

    assert await _event_ids(rdb, pid) == kept
    ours = [b for b in batches if b.project_id == pid]
    assert sum(b.scanned for b in ours) == 8  # each old event looked at once
    assert sum(b.deleted for b in ours) == 3


async def test_each_project_is_pruned_on_its_own(rdb: Database, pid: uuid.UUID) -> None:
    other = await _new_project(rdb)
    endpoint = await _endpoint(rdb, pid)
    stuck = set()
    for _ in range(4):  # this project's old events all wait on a delivery
        stuck.add(event := await _event(rdb, pid, OLD))
        await _delivery(rdb, pid, event, endpoint, "pending")
    stuck.add(await _event(rdb, pid, OLD, xid=NOT_FANNED_OUT))
    other_old = {await _event(rdb, other, OLD) for _ in range(4)}
    other_young = await _event(rdb, other, timedelta(days=1))

    deleted = await _prune(rdb, batch_size=2)

    assert deleted >= len(other_old)
    assert await _event_ids(rdb, pid) == stuck
    assert await _event_ids(rdb, other) == {other_young}


async def test_an_event_somebody_holds_is_skipped_and_pruned_by_the_next_run(
    rdb: Database, pid: uuid.UUID, retention_url: str
) -> None:
    held = await _event(rdb, pid, OLD)
    free = await _event(rdb, pid, OLD + timedelta(minutes=1))
    # What a redelivery does before resetting a delivery: it keeps the event from going.
    other = await asyncpg.connect(retention_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "SELECT 1 FROM events WHERE project_id = $1 AND id = $2 FOR KEY SHARE", pid, held
        )
        await _prune(rdb)
        assert await _event_ids(rdb, pid) == {held}
        await tx.commit()
    finally:
        await other.close()
    assert free not in await _event_ids(rdb, pid)

    await _prune(rdb)

    assert await _event_ids(rdb, pid) == set()


async def test_a_project_whose_batch_times_out_does_not_keep_later_projects_from_pruning(
    rdb: Database, retention_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery row held by somebody else blocks the cascade of its event's batch past
    lock_timeout: the batch shrinks (halving, down to the floor) so the project is pruned up to
    that row, then the run goes on to the next project and fails at the end."""
    monkeypatch.setattr(
        retention, "BATCH_SETTINGS", "SET LOCAL lock_timeout = '100ms'; SET LOCAL jit = off"
    )
    monkeypatch.setattr(retention, "MIN_BATCH", 1)
    await _cursor(rdb, CURSOR_XID, uuid.UUID(int=0))
    # Projects are pruned in id order: the stuck one first, the other after it.
    stuck = uuid.UUID(int=secrets.randbits(64))
    later = uuid.UUID(int=(0xFFFF << 112) | secrets.randbits(64))
    for project_id in (stuck, later):
        await _run(rdb, "INSERT INTO projects (id, name) VALUES ($1, 'retention')", project_id)
    endpoint = await _endpoint(rdb, stuck)
    before = [await _event(rdb, stuck, OLD + timedelta(minutes=m)) for m in (4, 3, 2)]
    held_event = await _event(rdb, stuck, OLD + timedelta(minutes=1))
    held = await _delivery(rdb, stuck, held_event, endpoint, "succeeded")
    after = await _event(rdb, stuck, OLD)
    later_old = {await _event(rdb, later, OLD) for _ in range(3)}
    later_young = await _event(rdb, later, timedelta(days=1))
    batches: list[PruneBatch] = []

    other = await asyncpg.connect(retention_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "SELECT 1 FROM webhook_deliveries WHERE project_id = $1 AND id = $2 FOR UPDATE",
            stuck,
            held,
        )
        with pytest.raises(LockTimeout):
            await _prune(rdb, batch_size=4, on_batch=batches.append)
        await tx.rollback()
    finally:
        await other.close()

    remaining = await _event_ids(rdb, stuck)
    assert remaining == {held_event, after}
    assert not remaining & set(before)
    assert [b.deleted for b in batches if b.project_id == stuck] == [2, 1]  # at 2, then at 1
    assert await _event_ids(rdb, later) == {later_young}
    assert later_old.isdisjoint(await _event_ids(rdb, later))

    assert await _prune(rdb, batch_size=4) >= 2  # the row is free again: the next run goes on
    assert await _event_ids(rdb, stuck) == set()


async def test_a_delivery_made_pending_after_the_batch_locked_its_event_keeps_the_event(
    rdb: Database, pid: uuid.UUID, retention_url: str
) -> None:
    """A redelivery that resets a finished delivery without touching the event row commits
    between the batch's two statements: the delete, on a newer snapshot, sees it."""
    endpoint = await _endpoint(rdb, pid)
    event = await _event(rdb, pid, OLD)
    delivery = await _delivery(rdb, pid, event, endpoint, "succeeded")
    bound = uuid7_floor(utcnow() - timedelta(days=DAYS))
    async with rdb.transaction() as session:
        conn = driver(session)
        row = await conn.fetchrow(retention.WINDOW, pid, retention.NIL, bound, 100)
        assert row is not None
        assert len(row["locked"]) == 1
        other = await asyncpg.connect(retention_url)
        try:
            await other.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0"
                " WHERE project_id = $1 AND id = $2",
                pid,
                delivery,
            )
        finally:
            await other.close()
        status = await conn.execute(
            retention.DELETE, pid, retention.NIL, row["window_end"], row["locked"]
        )
        assert status == "DELETE 0"
    assert await _event_ids(rdb, pid) == {event}
    assert await _count(rdb, "webhook_deliveries", pid) == 1


async def test_dry_run_counts_what_would_go_and_deletes_nothing(
    rdb: Database, pid: uuid.UUID
) -> None:
    await _prune(rdb)  # nothing old left anywhere
    events = {await _event(rdb, pid, OLD) for _ in range(3)}
    events.add(await _event(rdb, pid, OLD, xid=NOT_FANNED_OUT))

    assert await _prune(rdb, batch_size=2, dry_run=True) == 3
    assert await _event_ids(rdb, pid) == events
    assert await _prune(rdb, batch_size=2) == 3


async def test_the_cli_dry_run_counts_and_the_run_deletes(
    rdb: Database, pid: uuid.UUID, retention_url: str
) -> None:
    await _prune(rdb)  # nothing old left anywhere
    events = {await _event(rdb, pid, OLD) for _ in range(2)}
    env = {**os.environ, "DATABASE_URL": retention_url, "CREDITD_EVENTS__RETENTION_DAYS": "30"}

    async def cli(*args: str) -> str:
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app.cli", "prune-events", *args],
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip().splitlines()[-1]

    assert await cli("--dry-run") == "would delete 2 event(s) older than 30 days"
    assert await _event_ids(rdb, pid) == events
    assert await cli() == "deleted 2 event(s) older than 30 days"
    assert await _event_ids(rdb, pid) == set()


# --- plans ----------------------------------------------------------------------------------------


def _literal(value: object) -> str:
    if isinstance(value, list):  # of ctids
        return "'{" + ",".join(f'"({b},{o})"' for b, o in value) + "}'"
    return f"'{value}'" if isinstance(value, uuid.UUID) else str(value)


async def _plan(conn: Any, sql: str, types: str, args: tuple[object, ...], mode: str) -> str:
    """The plan a prepared ``sql`` gets under ``plan_cache_mode = mode`` (what the driver's
    cached statements get: custom plans first, then maybe the generic one)."""
    await conn.execute(f"PREPARE retention_plan ({types}) AS {sql}")
    try:
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        values = ", ".join(_literal(a) for a in args)
        rows = await conn.fetch(f"EXPLAIN EXECUTE retention_plan ({values})")
    finally:
        await conn.execute("DEALLOCATE retention_plan")
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_batches_and_their_cascades_have_indexes_to_run_on(
    rdb: Database, pid: uuid.UUID, mode: str
) -> None:
    """With sequential scans priced out (on tables this small the planner may rightly prefer
    one), a plan that still has one means no index serves the statement. The plans on 10 M
    events are in bench/RESULTS.md."""
    bound = uuid7_floor(utcnow() - timedelta(days=DAYS))
    nil = retention.NIL
    statements = [
        (retention.WINDOW, "uuid, uuid, uuid, bigint", (pid, nil, bound, 5000), "pk_events"),
        # By ctid, or (the planner's choice on a small table) the window's range of the key.
        (
            retention.DELETE,
            "uuid, uuid, uuid, tid[]",
            (pid, nil, bound, [(0, 1)]),
            "Tid Scan|pk_events",
        ),
        # What the ON DELETE CASCADE triggers run for each deleted event and delivery.
        (
            "DELETE FROM ONLY webhook_deliveries WHERE $1 = project_id AND $2 = event_id",
            "uuid, uuid",
            (pid, uuid7()),
            "uq_webhook_deliveries_project_id",
        ),
        (
            "DELETE FROM ONLY webhook_attempts WHERE $1 = project_id AND $2 = delivery_id",
            "uuid, uuid",
            (pid, uuid7()),
            "ix_webhook_attempts_project_id_delivery_id",
        ),
    ]
    async with rdb.transaction() as session:
        conn = driver(session)
        await conn.execute("SET LOCAL enable_seqscan = off")
        for sql, types, args, index in statements:
            plan = await _plan(conn, sql, types, args, mode)
            assert "Seq Scan" not in plan, plan
            assert re.search(index, plan), plan
        # The window is a range of the key (its bounds are the index condition), not a filter
        # over all of the project's events.
        plan = await _plan(conn, retention.WINDOW, statements[0][1], statements[0][2], mode)
        assert any(
            "Index Cond" in line and "id > " in line and "id < " in line
            for line in plan.splitlines()
        ), plan


async def test_a_full_batch_deletes_its_rows_by_ctid_without_scanning_the_table(
    rdb: Database, pid: uuid.UUID
) -> None:
    """The DELETE goes to the 5,000 rows the batch locked, by ctid or along the window's key
    range, never by scanning the table (by primary key with the ids alone, the planner took a
    sequential scan of a 200 k-row table for cheaper)."""
    at = utcnow() - timedelta(days=1)
    ids = sorted(uuid7_at(at + timedelta(milliseconds=i)) for i in range(20_000))
    async with rdb.transaction() as session:
        conn = driver(session)
        await conn.copy_records_to_table(
            "events",
            records=[(i, pid, "credits.granted", "{}", None) for i in ids],
            columns=["id", "project_id", "type", "data", "fanout_xid"],
        )
    await _run(rdb, "ANALYZE events")
    batch = ids[5_000:10_000]
    async with rdb.transaction() as session:
        conn = driver(session)
        ctids = [
            r["ctid"]
            for r in await conn.fetch(
                "SELECT ctid FROM events WHERE project_id = $1 AND id = ANY($2::uuid[])",
                pid,
                batch,
            )
        ]
        assert len(ctids) == 5_000
        args = (pid, ids[4_999], batch[-1], ctids)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + retention.DELETE, *args))
    plan = re.sub(r"'\{[^}]{200,}\}'", "'{...}'", plan)  # the 5,000 ctids
    assert "Seq Scan on events" not in plan, plan
    by_key_range = any(
        "Index Cond" in line and "id > " in line and "id <= " in line for line in plan.splitlines()
    )
    assert "Tid Scan on events" in plan or by_key_range, plan


# --- next to the ledger (shared database) ---------------------------------------------------------


async def test_pruning_leaves_the_ledger_and_recent_events_alone(
    db: Database, project: Project
) -> None:
    await project.user("alice", credits=Decimal("100"))
    await project.user("bob", credits=Decimal("5"))
    r = await project.get("/v1/events")
    recent = {e["id"] for e in r.json()["data"]}
    assert len(recent) >= 2
    pid = uuid.UUID(project.id)
    old = set()
    for i in range(3):
        at = utcnow() - OLD - timedelta(hours=i)
        old.add(event_id := uuid7_at(at))
        async with db.transaction() as session:
            await driver(session).execute(
                "INSERT INTO events (id, project_id, type, user_id, data, created_at, fanout_xid)"
                " VALUES ($1, $2, 'credits.granted', 'alice', '{}', $3, NULL)",
                event_id,
                pid,
                at,
            )

    assert await prune_events_once(db, retention_days=DAYS, batch_size=2) >= 3

    async with db.transaction() as session:
        left = {
            r["id"]
            for r in await driver(session).fetch("SELECT id FROM events WHERE project_id = $1", pid)
        }
    assert left & old == set()
    assert {str(i) for i in left} == recent
    assert Decimal(str((await project.balance("alice"))["available"])) == 100
    await assert_ledger_consistent(db)
