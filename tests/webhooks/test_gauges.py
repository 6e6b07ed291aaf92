"""/metrics reads the delivery queue's depth and oldest pending age from the database at
scrape time, and still answers when the database cannot.

Against a database (and an app) of its own, so the queue holds exactly what the tests put in.
"""

from __future__ import annotations

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


@pytest.fixture
async def gdb(gauge_app: httpx.AsyncClient) -> Database:
    """The app's database, with no delivery in it."""
    db: Database = gauge_app.app_db  # type: ignore[attr-defined]
    async with db.transaction() as session:
        await driver(session).execute("DELETE FROM webhook_deliveries")
    return db


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics")
    assert r.status_code == 200
    values = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("creditd_webhook_queue_depth", "creditd_webhook_oldest_pending_age_seconds"):
            values[name] = float(value)
    return values


async def _deliveries(db: Database, *ages_and_statuses: tuple[timedelta, str]) -> None:
    """One project and event per call; a delivery (to an endpoint of its own, as
    (project, event, endpoint) is unique) per (age, status)."""
    project, event = uuid.uuid4(), uuid7()
    async with db.transaction() as session:
        conn = driver(session)
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'gauges')", project)
        await conn.execute(
            "INSERT INTO events (id, project_id, type, data) VALUES ($1, $2, 'balance.low', '{}')",
            event,
            project,
        )
        for age, status in ages_and_statuses:
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
                " next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, now(), $6)",
                uuid7(),
                project,
                endpoint,
                event,
                status,
                utcnow() - age,
            )


async def test_an_empty_queue_reads_zero_depth_and_zero_age(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    values = await _scrape(gauge_app)
    assert values == {
        "creditd_webhook_queue_depth": 0.0,
        "creditd_webhook_oldest_pending_age_seconds": 0.0,
    }


async def test_metrics_show_the_pending_deliveries_and_the_oldest_ones_age(
    gauge_app: httpx.AsyncClient, gdb: Database
) -> None:
    await _deliveries(
        gdb,
        (timedelta(seconds=90), "pending"),
        (timedelta(seconds=30), "pending"),
        (timedelta(hours=5), "succeeded"),  # finished: neither counted nor aged
        (timedelta(hours=6), "failed"),
    )

    values = await _scrape(gauge_app)

    assert values["creditd_webhook_queue_depth"] == 2.0
    age = values["creditd_webhook_oldest_pending_age_seconds"]
    assert 90 <= age < 90 + 60, age


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
