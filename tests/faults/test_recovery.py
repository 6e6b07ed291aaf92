"""Recovery from database faults under load, on a PostgreSQL server of this module's own.

Backends are killed with ``pg_terminate_backend`` and the server is restarted with
``pg_ctl restart -m immediate``; the shared test server and the system one are never touched.
After each fault the service answers again within 5 s with no restart of its own, every
acknowledged operation was applied exactly once and every 503 changed nothing, and
``creditd verify`` holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from fastapi import FastAPI

from app.cli import run_migrations
from app.core.settings import ApiSettings, DatabaseSettings, Settings, WorkerSettings
from app.db.engine import create_engine
from app.db.session import Database
from app.main import create_app
from app.workers.runner import run_workers
from tests.conftest import ADMIN_TOKEN, Project, create_project
from tests.faults.load import Load, live_client, reconcile, recovers_within, verify_all
from tests.fixtures.own_server import OwnServer, own_server
from tests.fixtures.serving import serve

RECOVERY_SECONDS = 5.0


@pytest.fixture(scope="module")
def pg() -> Iterator[OwnServer]:
    with own_server() as server:
        run_migrations(server.url)
        yield server


@pytest.fixture(scope="module")
def fault_settings(pg: OwnServer) -> Settings:
    return Settings(
        env="test",
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=pg.url),  # the production pool: 20 + 10
        api=ApiSettings(rate_limit_per_second=100_000, rate_limit_burst=100_000),
        workers=WorkerSettings(sweep_interval_seconds=0.5),
    )


@dataclass
class Served:
    app: FastAPI
    url: str

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database


@pytest.fixture(scope="module")
async def served(fault_settings: Settings) -> AsyncIterator[Served]:
    app = create_app(fault_settings)
    async with app.router.lifespan_context(app), serve(app) as url:
        yield Served(app, url)


@pytest.fixture
async def load(served: Served) -> AsyncIterator[Load]:
    async with live_client(served.url) as http:
        made = await create_project(http, "faults")
        project = Project(id=made.id, key=made.key, client=http)
        await project.price("_default", 1, 1)
        users = [f"u_{i}" for i in range(8)]
        for user in [*users, "probe"]:
            await project.user(user, credits=1_000_000)
        yield Load(project, users)


async def _settle(load: Load, served: Served, pg: OwnServer) -> None:
    conn = await pg.admin()
    try:
        await reconcile(load, conn)
    finally:
        await conn.close()
    await verify_all(served.db)


async def test_service_recovers_after_its_backends_are_killed_three_times_under_load(
    load: Load, served: Served, pg: OwnServer
) -> None:
    running = asyncio.create_task(load.run())
    recoveries = []
    try:
        await asyncio.sleep(1.0)
        for _ in range(3):
            assert await pg.terminate_app_backends() > 0
            recoveries.append(await recovers_within(load, "probe", RECOVERY_SECONDS))
            await asyncio.sleep(0.7)
    finally:
        load.stop.set()
        await running
    assert len(recoveries) == 3
    assert all(r < RECOVERY_SECONDS for r in recoveries)
    statuses = load.statuses()
    assert statuses[(201, None)] > 0, statuses
    print(f"\nkilled backends x3: {dict(statuses)}; recovered in {recoveries}")
    await _settle(load, served, pg)


async def test_service_recovers_after_an_immediate_restart_under_load(
    load: Load, served: Served, pg: OwnServer
) -> None:
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.restart, "immediate")  # returns once it accepts connections
        recovered = await recovers_within(load, "probe", RECOVERY_SECONDS)
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await running
    statuses = load.statuses()
    assert statuses[(201, None)] > 0, statuses
    print(f"\nrestart -m immediate: {dict(statuses)}; recovered in {recovered:.2f} s")
    await _settle(load, served, pg)


async def test_readyz_tells_the_truth_during_an_outage_and_requests_get_503(
    load: Load, served: Served, pg: OwnServer
) -> None:
    async with live_client(served.url) as http:
        assert (await http.get("/readyz")).status_code == 200
        await asyncio.to_thread(pg.stop, "fast")
        try:
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            assert not await load.pair("u_0")
            (refused,) = load.ops[-1:]
            assert (refused.status, refused.code) == (503, "database_unavailable")
        finally:
            await asyncio.to_thread(pg.start)
        began = time.monotonic()
        while (await http.get("/readyz")).status_code != 200:
            assert time.monotonic() - began < RECOVERY_SECONDS
            await asyncio.sleep(0.05)
    await recovers_within(load, "u_0", RECOVERY_SECONDS)
    await _settle(load, served, pg)


async def test_worker_expires_a_two_second_hold_within_seconds_after_a_restart(
    load: Load, served: Served, pg: OwnServer, fault_settings: Settings
) -> None:
    # `creditd worker`'s shape: its own engine (pool of 4) and the job loop.
    worker_db = Database(create_engine(fault_settings.database, pool_size=4))
    worker = asyncio.create_task(run_workers(worker_db, fault_settings))
    try:
        await asyncio.sleep(1.0)  # the jobs have run: the pool holds connections to kill
        r = await load.project.post(
            "/v1/transactions/start",
            {"user_id": "u_0", "model": "m", "hold_ttl_seconds": 2,
             "provisional_tokens": {"input_tokens": 1000}},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        txn_id = r.json()["transaction_id"]
        due = time.monotonic() + 2
        await asyncio.to_thread(pg.restart, "immediate")
        back = time.monotonic()
        status = await _expired_within(load.project, txn_id, seconds=RECOVERY_SECONDS + 2)
        expired_at = time.monotonic()
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await worker_db.dispose()
    assert status == "expired"
    late = expired_at - max(back, due)
    print(f"\nhold expired {late:.2f} s after it was due and the database was back")
    assert late < RECOVERY_SECONDS
    balance = (await load.project.get("/v1/users/u_0")).json()["balance"]
    assert Decimal(str(balance["held"])) == 0
    await verify_all(served.db)


async def _expired_within(project: Project, txn_id: str, *, seconds: float) -> str:
    began = time.monotonic()
    status = ""
    while time.monotonic() - began < seconds + 2:  # the hold itself is due 2 s after start
        r = await project.get(f"/v1/transactions/{txn_id}")
        if r.status_code == 200:
            status = r.json()["status"]
            if status == "expired":
                break
        await asyncio.sleep(0.1)
    return status
