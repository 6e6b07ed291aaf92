"""The dispatcher survives database faults mid-dispatch (its backends killed, the server
restarted) and delivers everything, on a PostgreSQL server of this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from app.cli import run_migrations
from app.core.ids import uuid7
from app.core.settings import DatabaseSettings
from app.db.engine import create_engine
from app.db.session import Database, driver
from tests.conftest import assert_ledger_consistent
from tests.fakes.webhook_receiver import Received, Receiver, Reply, webhook_receiver
from tests.fixtures.own_server import OwnServer, own_server
from tests.webhooks.dispatch_helpers import (
    BOX,
    add_endpoint,
    attempts,
    deliveries,
    dispatcher,
    running,
    until,
    write_event,
)

EVENTS = 300


@pytest.fixture(scope="module")
def pg() -> Iterator[OwnServer]:
    with own_server() as server:
        run_migrations(server.url)
        yield server


@pytest.fixture
async def db(pg: OwnServer) -> AsyncIterator[Database]:
    # `creditd worker`'s shape: an engine of its own, pool of 4.
    database = Database(create_engine(DatabaseSettings(url=pg.url), pool_size=4))
    try:
        yield database
    finally:
        await database.dispose()


async def _setup(db: Database, rx: Receiver) -> tuple[uuid.UUID, list[uuid.UUID]]:
    project = uuid7()
    async with db.transaction() as session:
        await driver(session).execute(
            "UPDATE webhook_endpoints SET enabled = false WHERE enabled"  # earlier tests'
        )
        await driver(session).execute(
            "INSERT INTO projects (id, name) VALUES ($1, 'faults')", project
        )
    await add_endpoint(db, BOX, project, rx.url)
    async with db.transaction() as session:
        events = [
            await write_event(driver(session), project, "credits.granted", {"i": i})
            for i in range(EVENTS)
        ]
    return project, events


def _at_least(count: int) -> Callable[[list[Received]], bool]:
    return lambda reqs: len(reqs) >= count


async def _all_succeeded(db: Database, project: uuid.UUID) -> bool:
    try:
        rows = await deliveries(db, project)
    except Exception:  # the database is still coming back
        return False
    return len(rows) == EVENTS and all(r["status"] == "succeeded" for r in rows)


async def _check(db: Database, project: uuid.UUID, events: list[uuid.UUID], rx: Receiver) -> None:
    """Everything delivered and recorded; a request arrived twice only for a second attempt
    (at least once: a dispatcher cut off between sending and recording sends again)."""
    rows = await deliveries(db, project)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert {q.id for q in rx.requests} == {str(e) for e in events}
    received = Counter(q.id for q in rx.requests)
    assert all(received[str(r["event_id"])] <= r["attempts"] for r in rows)
    tries = await attempts(db, project)
    assert {t["delivery_id"] for t in tries if t["succeeded"]} == {r["id"] for r in rows}
    await assert_ledger_consistent(db)


async def test_the_dispatcher_recovers_when_its_backends_are_killed_mid_dispatch(
    pg: OwnServer, db: Database
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(delay=0.02)
        project, events = await _setup(db, rx)
        async with running(dispatcher(db, timeout_seconds=1, lease_seconds=2)):
            for share in (0.1, 0.4):
                await rx.wait_for(_at_least(int(EVENTS * share)), within=30)
                assert await pg.terminate_app_backends() > 0
            await until(lambda: _all_succeeded(db, project), within=60, what="all delivered")
    await _check(db, project, events, rx)


async def test_the_dispatcher_recovers_from_an_immediate_restart_mid_dispatch(
    pg: OwnServer, db: Database
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(delay=0.02)
        project, events = await _setup(db, rx)
        async with running(dispatcher(db, timeout_seconds=1, lease_seconds=2)):
            await rx.wait_for(_at_least(EVENTS // 5), within=30)
            await asyncio.to_thread(pg.restart, "immediate")
            await until(lambda: _all_succeeded(db, project), within=60, what="all delivered")
    await _check(db, project, events, rx)
