"""The export over real TCP: slow clients hold no connection, the per-process limits, a client
that leaves, and a database that fails mid-stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.db.session import Database
from app.ledger import chain, service
from app.ledger.slots import ExportSlots
from tests.conftest import Project, create_project
from tests.ledger.helpers import seed

N = 40_000
# An export's batch (its query text), in a transaction or waiting for a lock.
_BATCH = "query LIKE '%ORDER BY created_at, id%' AND query NOT LIKE '%pg_stat_activity%'"
_EXPORTING = f"""
    SELECT pid, state FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND {_BATCH} AND xact_start IS NOT NULL
"""
_WAITING = f"""
    SELECT pid FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND {_BATCH} AND wait_event_type = 'Lock'
"""


async def _exporters(conn: Any) -> list[Any]:
    return list(await conn.fetch(_EXPORTING))


async def _until_no_exporter(conn: Any) -> None:
    for _ in range(100):
        if not await _exporters(conn):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"an export's transaction is still open: {await _exporters(conn)}")


async def _until_pool_idle(db: Database, seconds: float = 10) -> None:
    """Every pooled connection back in the pool (nothing else of the test app runs now)."""
    deadline = time.monotonic() + seconds
    while db.engine.pool.checkedout():  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            pytest.fail(f"{db.engine.pool.checkedout()} connections still checked out")  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)


@pytest.fixture
async def pg(settings: Any) -> Any:
    conn = await asyncpg.connect(settings.database.url)
    yield conn
    await conn.close()


@contextmanager
def _slots(app: FastAPI, limit: int, per_project: int) -> Iterator[ExportSlots]:
    # Not monkeypatch: starlette's State keeps attributes in a dict of its own, and undoing a
    # setattr on it deletes the attribute.
    kept = app.state.ledger_exports
    app.state.ledger_exports = fresh = ExportSlots(limit=limit, per_project=per_project)
    try:
        yield fresh
    finally:
        app.state.ledger_exports = kept


@pytest.fixture
def slots(app: FastAPI) -> Iterator[ExportSlots]:
    """Fresh slots with the default limits (2 per process, 1 per project), for this test only."""
    with _slots(app, 2, 1) as fresh:
        yield fresh


async def _another(live: Project, client: httpx.AsyncClient) -> Project:
    created = await create_project(client)
    return Project(id=created.id, key=created.key, client=live.client)


async def _open(stack: AsyncExitStack, project: Project) -> httpx.Response:
    """An export whose client reads the headers and then nothing."""
    return await stack.enter_async_context(
        project.client.stream("GET", "/v1/ledger/export", headers=project.headers)
    )


async def _until_exportable(project: Project) -> None:
    """The project's slot is free again: a new export answers 200 (within a few seconds)."""
    for _ in range(100):
        r = await project.get("/v1/ledger/export", params={"until": "2000-01-01T00:00:00Z"})
        if r.status_code == 200:
            return
        assert r.status_code in (429, 503), r.text
        await asyncio.sleep(0.05)
    pytest.fail("the export's slot was never released")


async def test_a_slow_client_holds_no_connection_and_one_that_leaves_frees_its_slot(
    live_project: Project, pg: Any, db: Database, slots: ExportSlots
) -> None:
    await live_project.user("alice")
    await seed(pg, live_project.id, "alice", N)
    headers = live_project.headers
    async with live_project.client.stream("GET", "/v1/ledger/export", headers=headers) as r:
        assert r.status_code == 200
        # Kept, not left by `break`: an abandoned iterator closes the response when collected.
        reading = r.aiter_bytes()
        assert await anext(reading)
        # The client reads no further: the reader fills its queue and waits, holding no
        # connection and no transaction (each batch had one of its own).
        await _until_pool_idle(db)
        assert not await _exporters(pg)
        await asyncio.sleep(0.5)
        assert slots.running == 1, "the export is still being streamed"
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # The client leaves: the export ends and gives its slot back.
    await _until_exportable(live_project)
    assert slots.running == 0
    await _until_no_exporter(pg)


async def test_a_client_that_takes_nothing_is_cut_off_and_its_slot_freed(
    live_project: Project, pg: Any, slots: ExportSlots, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CLIENT_STALL_SECONDS", 0.5)
    await live_project.user("alice")
    await seed(pg, live_project.id, "alice", N)
    headers = live_project.headers
    async with live_project.client.stream("GET", "/v1/ledger/export", headers=headers) as r:
        assert r.status_code == 200
        reading = r.aiter_bytes()
        received = await anext(reading)
        for _ in range(100):  # the server's send waits on the full socket, then gives up
            if slots.running == 0:
                break
            await asyncio.sleep(0.05)
        assert slots.running == 0
        rest = bytearray()
        with pytest.raises(httpx.HTTPError):  # what was buffered, then no last chunk
            await _drain(reading, rest)
    assert b"ledger_export_end" not in received + rest


async def _drain(reading: Any, into: bytearray) -> None:
    async for chunk in reading:
        into += chunk


async def test_many_slow_exports_leave_the_pool_to_other_requests(
    live_project: Project,
    client: httpx.AsyncClient,
    pg: Any,
    db: Database,
    settings: Any,
    app: FastAPI,
) -> None:
    """More exports than the pool has connections, each client reading only the headers: an
    unrelated request still gets a connection (each export held one for as long as its client
    took, until the pool timed out every other request with 503 pool_timeout)."""
    pool = settings.database.pool_size + settings.database.max_overflow
    await live_project.user("alice", 1)
    await seed(pg, live_project.id, "alice", N)
    async with AsyncExitStack() as stack:
        stack.enter_context(_slots(app, 1000, 1000))
        responses = [await _open(stack, live_project) for _ in range(pool + 5)]
        assert {r.status_code for r in responses} == {200}
        started = time.monotonic()
        r = await live_project.get("/v1/users/alice")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 5  # the pool waits 10 s before a 503
        await _until_pool_idle(db)
        assert not await _exporters(pg)
    await _until_no_exporter(pg)


async def test_exports_beyond_the_limits_are_refused_with_retry_after(
    live_project: Project, client: httpx.AsyncClient, pg: Any, slots: ExportSlots
) -> None:
    first, second, third = live_project, *[await _another(live_project, client) for _ in "ab"]
    for project in (first, second, third):
        await project.user("alice", 1)
    for project in (first, second):  # exports that outlast the test's requests
        await seed(pg, project.id, "alice", N)
    # A refused plan (an unknown `after`) gives its slot back at once.
    missing = await first.get("/v1/ledger/export", params={"after": 2**62})
    assert missing.status_code == 404
    assert slots.running == 0
    async with AsyncExitStack() as stack:
        assert (await _open(stack, first)).status_code == 200
        again = await first.get("/v1/ledger/export")
        assert again.status_code == 429, again.text
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["code"] == "ledger_export_in_progress"
        assert int(again.headers["retry-after"]) >= 1
        assert (await _open(stack, second)).status_code == 200
        full = await third.get("/v1/ledger/export")
        assert full.status_code == 503, full.text
        assert full.headers["content-type"] == "application/problem+json"
        assert full.json()["code"] == "ledger_exports_busy"
        assert int(full.headers["retry-after"]) >= 1
        # Other requests are not limited.
        assert (await third.get("/v1/users/alice")).status_code == 200
    await _until_exportable(third)
    await _until_exportable(first)


async def _kill_the_next_batch(conn: Any, locked: asyncio.Event) -> None:
    """Make the export's next batch wait for a lock, then terminate its backend."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE ledger_entries IN ACCESS EXCLUSIVE MODE")
        locked.set()
        # A wait bound, not a speed goal: on a loaded machine the next batch can take seconds.
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            # pg_stat_activity is read once per transaction and kept: read it afresh.
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await conn.fetch(_WAITING)
            if waiting:
                await conn.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
                return
            await asyncio.sleep(0.01)
    pytest.fail("no export batch came to wait for the lock")


async def _read_killing_a_batch(project: Project, conn: Any, received: bytearray) -> None:
    killer: asyncio.Task[None] | None = None
    locked = asyncio.Event()
    try:
        async with project.client.stream("GET", "/v1/ledger/export", headers=project.headers) as r:
            async for chunk in r.aiter_bytes():
                if killer is None:
                    killer = asyncio.create_task(_kill_the_next_batch(conn, locked))
                    # The client waits meanwhile: the export, a few buffers ahead, cannot end.
                    await locked.wait()
                received += chunk
    finally:
        if killer is not None:
            await killer


async def test_a_database_failure_mid_stream_ends_without_trailer_and_resumes(
    live_project: Project, pg: Any, settings: Any, no_horizon_margin: None, slots: ExportSlots
) -> None:
    await live_project.user("alice")
    await seed(pg, live_project.id, "alice", N)
    received = bytearray()
    locker = await asyncpg.connect(settings.database.url)
    try:
        with pytest.raises(httpx.HTTPError):  # the response is cut off: no last chunk
            await _read_killing_a_batch(live_project, locker, received)
    finally:
        await locker.close()
    kept = bytes(received[: received.rindex(b"\n") + 1])
    got = chain.summarize(kept.splitlines(keepends=True))
    assert not got.complete
    assert 0 < got.entries < N
    last = json.loads(kept.splitlines()[-1])
    params = {"after": last["id"], "prev_hash": last["hash"]}
    r2 = await live_project.get("/v1/ledger/export", params=params)
    assert r2.status_code == 200
    whole = chain.summarize((kept + r2.content).splitlines(keepends=True))
    assert whole.complete
    assert whole.entries == N
    await _until_no_exporter(pg)
