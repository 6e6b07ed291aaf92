"""/metrics reads the delivery queue's depth, how overdue its most overdue delivery is and how
far fan-out lags behind the events from the database at scrape time, and still answers when
the database cannot.

Against a database (and an app) of its own, so the queue holds exactly what the tests put in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from app.cli import run_migrations
from app.core.clock import utcnow
from app.core.ids import uuid7
from app.core.settings import Settings
from app.db.session import Database, driver
from app.main import create_app
from app.webhooks import gauges
from tests.fixtures.database import fresh_database


@pytest.fixture(scope="module")
def gauges_url() -> Iterator[str]:
    with fresh_database() as (url, _):
        run_migrations(url)
        yield url


@pytest.fixture(scope="module")
async def gauge_app(settings: Settings, gauges_url: str) -> AsyncIterator[httpx.AsyncClient]:
    own = settings.model_copy(
        update={"database": settings.database.model_copy(update={"url": gauges_url})}
    )
    app = create_app(own)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app_db = app.state.db  # type: ignore[attr-defined]
            yield client


GAUGES = (
    "creditd_webhook_queue_depth",
    "creditd_webhook_oldest_pending_age_seconds",
    "creditd_webhook_fanout_lag_seconds",
)


@pytest.fixture
async def gdb(gauge_app: httpx.AsyncClient) -> Database:
    """The app's database, with no delivery in it and no event left for fan-out."""
    db: Database = gauge_app.app_db  # type: ignore[attr-defined]
    async with db.transaction() as session:
        await driver(session).execute("DELETE FROM webhook_deliveries")
        await driver(session).execute(
            "UPDATE events SET fanout_xid = NULL WHERE fanout_xid IS NOT NULL"
        )
        await driver(session).execute(
            "UPDATE webhook_fanout_cursor SET fanout_xid = 0, event_id = NULL"
        )
    return db


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    values = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            values[name] = float(value)
    return values


async def _deliveries(db: Database, *due_and_statuses: tuple[timedelta, str]) -> None:
    """One project and event (not for fan-out) per call; a delivery (to an endpoint of its own,
    as (project, event, endpoint) is unique) per (due, status): due that long ago (a negative
    one: that far ahead), made a day ago."""
    project, event = uuid.uuid4(), uuid7()
    async with db.transaction() as session:
        conn = driver(session)
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'gauges')", project)
        await conn.execute(
            "INSERT INTO events (id, project_id, type, data, fanout_xid)"
            " VALUES ($1, $2, 'balance.low', '{}', NULL)",
            event,
            project,
        )
        for due, status in due_and_statuses:
            endpoint = uuid7()
            await conn.execute(
                "INSERT INTO webhook_endpoints (id, project_id, url, event_types,"
                " secret_ciphertext) VALUES ($1, $2, 'https://example.test/hook', '{*}',"
                " 'not-a-real-ciphertext')",
                endpoint,
                project,
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, status,"
                " next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                uuid7(),
                project,
                endpoint,
                event,
                status,
                utcnow() - due,
                utcnow() - timedelta(days=1),
            )


async def test_an_empty_queue_reads_zero_depth_and_zero_age(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    values = await _scrape(gauge_app)
    assert values == dict.fromkeys(GAUGES, 0.0)


async def test_metrics_show_the_pending_deliveries_and_how_long_the_most_overdue_is_due(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    await _deliveries(
        gdb,
        (timedelta(seconds=90), "pending"),
        (timedelta(seconds=30), "pending"),
        (-timedelta(hours=3), "pending"),  # a retry hours ahead: counted, not overdue
        (timedelta(hours=5), "succeeded"),  # finished: neither counted nor aged
        (timedelta(hours=6), "failed"),
    )

    values = await _scrape(gauge_app)

    assert values["creditd_webhook_queue_depth"] == 3.0
    age = values["creditd_webhook_oldest_pending_age_seconds"]
    assert 90 <= age < 90 + 60, age  # since it fell due, not since it was made (a day)


async def test_deliveries_scheduled_ahead_are_queued_but_not_overdue(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    await _deliveries(gdb, (-timedelta(hours=5), "pending"), (-timedelta(seconds=5), "pending"))

    values = await _scrape(gauge_app)

    assert values["creditd_webhook_queue_depth"] == 2.0
    assert values["creditd_webhook_oldest_pending_age_seconds"] == 0.0


async def _event(db: Database, age: timedelta, *, for_fanout: bool = True) -> tuple[int, uuid.UUID]:
    """An event made ``age`` ago (its fanout_xid the writing transaction's, the default, or
    NULL); returns (fanout_xid, id)."""
    event = uuid7()
    async with db.transaction() as session:
        conn = driver(session)
        project = uuid.uuid4()
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'gauges')", project)
        xid = await conn.fetchval(
            "INSERT INTO events (id, project_id, type, data, created_at)"
            " VALUES ($1, $2, 'balance.low', '{}', $3) RETURNING fanout_xid",
            event,
            project,
            utcnow() - age,
        )
        if not for_fanout:
            await conn.execute("UPDATE events SET fanout_xid = NULL WHERE id = $1", event)
    return int(xid), event


async def test_a_stalled_fan_out_shows_as_lag_while_the_queue_reads_empty(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    await _event(gdb, timedelta(hours=2), for_fanout=False)  # never fanned out: not lag
    first = await _event(gdb, timedelta(seconds=120))
    second = await _event(gdb, timedelta(seconds=30))

    values = await _scrape(gauge_app)

    assert values["creditd_webhook_queue_depth"] == 0.0
    assert values["creditd_webhook_oldest_pending_age_seconds"] == 0.0
    lag = values["creditd_webhook_fanout_lag_seconds"]
    assert 120 <= lag < 120 + 60, lag

    async with gdb.transaction() as session:  # fan-out passes the first event
        await driver(session).execute(
            "UPDATE webhook_fanout_cursor SET fanout_xid = $1, event_id = $2", *first
        )
    lag = (await _scrape(gauge_app))["creditd_webhook_fanout_lag_seconds"]
    assert 30 <= lag < 30 + 60, lag

    async with gdb.transaction() as session:  # and the second: caught up
        await driver(session).execute(
            "UPDATE webhook_fanout_cursor SET fanout_xid = $1, event_id = $2", *second
        )
    assert (await _scrape(gauge_app))["creditd_webhook_fanout_lag_seconds"] == 0.0


async def test_the_gauges_read_one_index_descent_each(gdb: Database) -> None:
    async with gdb.transaction() as session:
        conn = driver(session)
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + gauges.QUEUE, 10))
    # The cursor bounds the scan of the events' index: it does not read the events before it.
    assert re.search(r"Index Cond: \(ROW\(fanout_xid, id\) > ROW\(", plan), plan
    assert "ix_events_fanout_xid_id" in plan, plan
    # Either partial index of pending deliveries (both hold only pending rows; the planner
    # picks by size): never the whole deliveries table.
    assert re.search(r"ix_webhook_deliveries_(next_attempt_at|pending_endpoint)", plan), plan
    assert "Seq Scan on webhook_deliveries" not in plan, plan


async def test_a_database_that_does_not_answer_leaves_the_gauges_and_metrics_answer(
    gauge_app: httpx.AsyncClient, gdb: Database, gauges_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _deliveries(gdb, (timedelta(seconds=10), "pending"))
    assert (await _scrape(gauge_app))["creditd_webhook_queue_depth"] == 1.0
    await _deliveries(gdb, (timedelta(seconds=10), "pending"))
    monkeypatch.setattr(gauges, "TIMEOUT_SECONDS", 0.2)
    blocker = await asyncpg.connect(gauges_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # The gauge query now waits for this lock until its statement timeout.
        await blocker.execute("LOCK TABLE webhook_deliveries IN ACCESS EXCLUSIVE MODE")

        assert await gauges.refresh(gdb) is False
        r = await gauge_app.get("/metrics")

        await tx.rollback()
    finally:
        await blocker.close()
    assert r.status_code == 200
    assert "creditd_webhook_queue_depth 1.0" in r.text  # the last value read, not 2
    assert 'creditd_http_requests_total{method="GET",route="/metrics",status="200"}' in r.text
    assert (await _scrape(gauge_app))["creditd_webhook_queue_depth"] == 2.0
