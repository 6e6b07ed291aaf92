"""Fixtures and helpers of the dispatcher's tests.

The dispatcher fans out every project's events and claims every due delivery, so its tests
run on a database of their own (created once per run, shared by their modules): endpoints
that other tests create never get a request from them. Endpoints are inserted directly.
Import the fixtures into a test module with ``from tests.webhooks.dispatch_helpers import *``
style names (``# noqa: F401``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from standardwebhooks import Webhook

from app.cli import run_migrations
from app.core.http import render_json
from app.core.ids import uuid7
from app.core.secrets import SecretBox, parse_keys
from app.core.settings import (
    ApiSettings,
    DatabaseSettings,
    PaymentsSettings,
    Settings,
    WebhookSettings,
)
from app.db.session import Database, driver
from app.main import create_app
from app.webhooks import signing
from app.webhooks.dispatcher import Dispatcher
from tests.conftest import ADMIN_TOKEN, Project, create_project
from tests.fakes.webhook_receiver import Received
from tests.fixtures.database import fresh_database

# One key for the run: the test's box and a `creditd worker` subprocess must agree on it.
SECRETS_KEY = Fernet.generate_key().decode()
BOX = SecretBox(parse_keys(SECRETS_KEY))

_shared: dict[str, Any] = {"users": 0}
_exit = contextlib.ExitStack()


@pytest.fixture(scope="session")
def dispatch_database_url() -> Iterator[str]:
    """A migrated database of the dispatcher tests' own, created once however many modules
    import this fixture (pytest makes one per module: they share the database)."""
    if _shared["users"] == 0:
        url, _server = _exit.enter_context(fresh_database())
        run_migrations(url)
        _shared["url"] = url
    _shared["users"] += 1
    try:
        yield str(_shared["url"])
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _exit.close()


def fast_webhooks(**overrides: Any) -> WebhookSettings:
    """Delivery settings shrunk for tests: sub-second retries and polling. Timeouts stay a few
    seconds (tests that time out set their own): the receivers share the test's event loop, on
    a machine that may be busy, and an unplanned timeout is an unplanned retry."""
    values: dict[str, Any] = {
        "allow_http": True,
        "allow_private_targets": True,  # the receivers listen on 127.0.0.1
        "timeout_seconds": 5,
        "connect_timeout_seconds": 2,
        "retry_schedule_seconds": [0.2, 0.2],
        "retry_jitter": 0,
        "lease_seconds": 10,
        "poll_interval_seconds": 0.05,
    }
    return WebhookSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def dispatch_settings(
    dispatch_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path_factory.mktemp("dispatch-data"),
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=dispatch_database_url, pool_size=10, max_overflow=10),
        api=ApiSettings(
            rate_limit_per_second=100_000,
            rate_limit_burst=100_000,
            project_rate_limit="100000/second",
            auth_failure_rate_limit="100000/second",
        ),
        payments=PaymentsSettings(secrets_key=SECRETS_KEY),
        webhooks=fast_webhooks(),
    )


@pytest.fixture(scope="module")
async def dispatch_app(dispatch_settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(dispatch_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
def dispatch_db(dispatch_app: FastAPI) -> Database:
    database: Database = dispatch_app.state.db
    return database


@pytest.fixture(scope="module")
def box(dispatch_settings: Settings) -> SecretBox:
    return SecretBox.from_settings(dispatch_settings)  # SECRETS_KEY, like BOX


@pytest.fixture
async def dispatch_client(dispatch_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=dispatch_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def wh_project(dispatch_client: httpx.AsyncClient) -> Project:
    return await create_project(dispatch_client, "webhooks")


@pytest.fixture
async def wh_other_project(dispatch_client: httpx.AsyncClient) -> Project:
    return await create_project(dispatch_client, "webhooks-other")


@pytest.fixture(autouse=True)
async def _quiet_endpoints(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After each test, disable every endpoint it left enabled, so that the next test's
    dispatcher has only its own endpoints to deliver to."""
    yield
    if "dispatch_db" in request.fixturenames:
        db: Database = request.getfixturevalue("dispatch_db")
        async with db.transaction() as session:
            await driver(session).execute(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'manual'"
                " WHERE enabled"
            )
            await driver(session).execute(
                "UPDATE webhook_deliveries SET status = 'canceled' WHERE status = 'pending'"
            )


def dispatcher(db: Database, *, max_backoff_seconds: float = 0.5, **overrides: Any) -> Dispatcher:
    """A dispatcher with test settings (``fast_webhooks`` plus ``overrides``)."""
    return Dispatcher(db, fast_webhooks(**overrides), BOX, max_backoff_seconds=max_backoff_seconds)


@contextlib.asynccontextmanager
async def running(*dispatchers: Dispatcher) -> AsyncIterator[None]:
    """Run the dispatchers' loops for the duration of the block."""
    tasks = [asyncio.create_task(d.run()) for d in dispatchers]
    try:
        yield
        for t in tasks:
            assert not t.done(), t  # the loops never end on their own
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def add_endpoint(
    db: Database,
    box: SecretBox,
    project_id: str | uuid.UUID,
    url: str,
    events: Sequence[str] = ("*",),
    *,
    enabled: bool = True,
    previous_secret: str | None = None,
    previous_expires_at: datetime | None = None,
) -> tuple[uuid.UUID, str]:
    """Insert an endpoint row (the API lands separately); returns its id and its secret."""
    endpoint_id = uuid7()
    secret = signing.new_secret()
    async with db.transaction() as session:
        await driver(session).execute(
            "INSERT INTO webhook_endpoints (id, project_id, url, event_types, enabled,"
            " secret_ciphertext, previous_secret_ciphertext, previous_secret_expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            endpoint_id,
            uuid.UUID(str(project_id)),
            url,
            list(events),
            enabled,
            box.encrypt(secret),
            None if previous_secret is None else box.encrypt(previous_secret),
            previous_expires_at,
        )
    return endpoint_id, secret


async def add_event(
    db: Database,
    project_id: str | uuid.UUID,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    user_id: str | None = None,
    fanout: bool = True,
) -> uuid.UUID:
    """Write an event as the app does (``fanout=False``: with fanout_xid NULL, as for
    ``webhook.test``)."""
    async with db.transaction() as session:
        return await write_event(
            driver(session), project_id, type, data, user_id=user_id, fanout=fanout
        )


async def write_event(
    conn: Any,
    project_id: str | uuid.UUID,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    user_id: str | None = None,
    fanout: bool = True,
) -> uuid.UUID:
    """The INSERT of ``app/events/service.py`` on an open connection (asyncpg)."""
    event_id = uuid7()
    body = render_json(data or {}).decode()
    if fanout:
        await conn.execute(
            "INSERT INTO events (id, project_id, type, user_id, data) VALUES ($1, $2, $3, $4, $5)",
            event_id, uuid.UUID(str(project_id)), type, user_id, body,
        )  # fmt: skip
    else:
        await conn.execute(
            "INSERT INTO events (id, project_id, type, user_id, data, fanout_xid)"
            " VALUES ($1, $2, $3, $4, $5, NULL)",
            event_id, uuid.UUID(str(project_id)), type, user_id, body,
        )  # fmt: skip
    return event_id


async def fetch(db: Database, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with db.transaction() as session:
        rows: list[asyncpg.Record] = await driver(session).fetch(sql, *args)
        return rows


async def deliveries(db: Database, project_id: str | uuid.UUID) -> list[asyncpg.Record]:
    return await fetch(
        db,
        "SELECT d.*, e.type FROM webhook_deliveries d JOIN events e"
        " ON e.project_id = d.project_id AND e.id = d.event_id"
        " WHERE d.project_id = $1 ORDER BY d.event_id, d.endpoint_id",
        uuid.UUID(str(project_id)),
    )


async def attempts(db: Database, project_id: str | uuid.UUID) -> list[asyncpg.Record]:
    return await fetch(
        db,
        "SELECT * FROM webhook_attempts WHERE project_id = $1 ORDER BY event_id, attempt, id",
        uuid.UUID(str(project_id)),
    )


async def endpoint(db: Database, endpoint_id: uuid.UUID) -> asyncpg.Record:
    (row,) = await fetch(db, "SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return row


async def until(
    condition: Any, *, within: float = 30.0, every: float = 0.05, what: str = "condition"
) -> Any:
    """Poll the async ``condition()`` until it returns something truthy; fail after
    ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {within} s (last: {value!r})")
        await asyncio.sleep(every)


def verified(request: Received, secret: str) -> Any:
    """The body as ``standardwebhooks`` verifies and parses it (raises if the signature or the
    headers are wrong)."""
    return Webhook(secret).verify(request.body, request.headers)


def ids(requests: Sequence[Received]) -> list[str]:
    return [r.id for r in requests]


def exact(body: bytes | str) -> Any:
    """JSON with numbers kept exact (as the stored event's text)."""
    return json.loads(body, parse_float=Decimal)


async def fanned_out(
    d: Dispatcher, db: Database, project_id: str | uuid.UUID, count: int, *, within: float = 30.0
) -> None:
    """Fan out until the project has ``count`` deliveries. The horizon is the oldest
    transaction running anywhere on the server, so on a shared server this may take a moment
    (and earlier tests' last events may come first)."""

    async def done() -> bool:
        await d.fan_out()
        return len(await deliveries(db, project_id)) >= count

    await until(done, within=within, what=f"fan-out to {count} deliveries")
