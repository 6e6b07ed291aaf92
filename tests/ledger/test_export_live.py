"""The export over real TCP: a client that leaves and a database that fails mid-stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest

from app.ledger import chain
from tests.conftest import Project
from tests.ledger.helpers import seed

N = 40_000
_EXPORTING = """
    SELECT pid, state FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND query LIKE '%ORDER BY created_at, id%'
      AND query NOT LIKE '%pg_stat_activity%' AND xact_start IS NOT NULL
"""


async def _exporters(conn: Any) -> list[Any]:
    return list(await conn.fetch(_EXPORTING))


async def _until_no_exporter(conn: Any) -> None:
    for _ in range(100):
        if not await _exporters(conn):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"the export's transaction is still open: {await _exporters(conn)}")


@pytest.fixture
async def pg(settings: Any) -> Any:
    conn = await asyncpg.connect(settings.database.url)
    yield conn
    await conn.close()


async def test_a_client_that_leaves_mid_stream_ends_the_export_transaction(
    live_project: Project, pg: Any
) -> None:
    await live_project.user("alice")
    await seed(pg, live_project.id, "alice", N)
    headers = live_project.headers
    async with live_project.client.stream("GET", "/v1/ledger/export", headers=headers) as r:
        assert r.status_code == 200
        async for _ in r.aiter_bytes():
            break
        assert await _exporters(pg), "the export holds its snapshot while streaming"
    await _until_no_exporter(pg)


async def _read_killing_the_exporter(project: Project, pg: Any, received: bytearray) -> None:
    async with project.client.stream("GET", "/v1/ledger/export", headers=project.headers) as r:
        async for chunk in r.aiter_bytes():
            if not received:
                (victim,) = await _exporters(pg)
                await pg.execute("SELECT pg_terminate_backend($1)", victim["pid"])
            received += chunk


async def test_a_database_failure_mid_stream_ends_without_trailer_and_resumes(
    live_project: Project, pg: Any, no_horizon_margin: None
) -> None:
    await live_project.user("alice")
    await seed(pg, live_project.id, "alice", N)
    received = bytearray()
    with pytest.raises(httpx.HTTPError):  # the response is cut off: no last chunk
        await _read_killing_the_exporter(live_project, pg, received)
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
