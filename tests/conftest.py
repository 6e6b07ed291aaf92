"""Test wiring: one real PostgreSQL database per run, migrated once; one project per test.

Tests commit for real (the app owns its transactions, as in production) and stay isolated
because every test works inside its own freshly created project: tenant scoping keeps them
apart, and `creditd verify` runs over everything after the concurrency tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.cli import run_migrations
from app.core.http import render_json
from app.core.settings import ApiSettings, DatabaseSettings, PaymentsSettings, Settings
from app.credits.verify import verify
from app.db.session import Database
from app.lane import CreditdAPI, build
from app.main import create_app
from tests.fakes.razorpay_server import (  # noqa: F401 - fixtures
    FakeRazorpayServer,
    fake_razorpay,
    fake_razorpay_server,
)
from tests.fakes.stripe_server import FakeStripe, fake_stripe, fake_stripe_server  # noqa: F401
from tests.fixtures.database import fresh_database
from tests.fixtures.redis import redis_prefix, redis_url  # noqa: F401 - fixtures
from tests.fixtures.serving import serve

ADMIN_TOKEN = "test-operator-token-0123456789"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as (url, _server):
        run_migrations(url)
        yield url


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    fake_stripe_server: FakeStripe,  # noqa: F811 - the imported fixture
    fake_razorpay_server: FakeRazorpayServer,  # noqa: F811
) -> Settings:
    return Settings(
        env="test",
        # Not the working directory's .creditd: the development secrets key is generated here.
        data_dir=tmp_path_factory.mktemp("data"),
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=database_url, pool_size=30, max_overflow=20),
        # Out of the way of the suite: the limits' own tests build apps with tight ones.
        api=ApiSettings(
            rate_limit_per_second=100_000,
            rate_limit_burst=100_000,
            project_rate_limit="100000/second",
            auth_failure_rate_limit="100000/second",
        ),
        # The official SDKs talk to the fake providers on 127.0.0.1 (tests/fakes/).
        payments=PaymentsSettings(
            stripe_api_base=fake_stripe_server.url,
            razorpay_api_base=fake_razorpay_server.url,
            provider_timeout_seconds=5,
        ),
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@contextmanager
def fast_metering(app: FastAPI, *, on: bool) -> Iterator[None]:
    """The app's lane rebuilt with the metering fast path (app/transactions/fast.py) on or off,
    for the block; the lane it had afterwards."""
    assert isinstance(app, CreditdAPI)
    saved = app._lane, app._lane_built
    app._lane, app._lane_built = build(app, app.lane_max_body_bytes, fast=on), True
    try:
        yield
    finally:
        app._lane, app._lane_built = saved


@pytest.fixture
def general_path(app: FastAPI) -> Iterator[None]:
    """The app without the metering fast path: for tests of how the general path runs a start
    or a completion (its BEGIN, its COMMIT)."""
    with fast_metering(app, on=False):
        yield


@pytest.fixture(scope="session")
def db(app: FastAPI) -> Database:
    database: Database = app.state.db
    return database


@pytest.fixture(scope="session")
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The same app served by uvicorn on a real 127.0.0.1 socket, for racing HTTP clients."""
    async with serve(app) as url:
        yield url


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@dataclass
class Project:
    id: str
    key: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def request(self, method: str, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        if json is not None:
            # Encoded like the app encodes: Decimals go out as exact JSON numbers.
            kw["content"] = render_json(json)
            headers.setdefault("Content-Type", "application/json")
        return await self.client.request(method, path, headers=headers, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, json, **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("PATCH", path, json, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    async def grant(self, user_id: str, amount: Any, **extra: Any) -> dict[str, Any]:
        r = await self.post(f"/v1/users/{user_id}/credits", {"amount": amount, **extra})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def user(self, user_id: str, credits: Any = None) -> dict[str, Any]:
        r = await self.post("/v1/users", {"id": user_id})
        assert r.status_code == 201, r.text
        if credits is not None:
            await self.grant(user_id, credits)
        return dict(r.json())

    async def price(self, model: str, inp: Any, out: Any, **extra: Any) -> None:
        body = {"input_price_per_1k": inp, "output_price_per_1k": out, **extra}
        r = await self.put(f"/v1/models/{model}", body)
        assert r.status_code == 200, r.text

    async def balance(self, user_id: str) -> dict[str, Any]:
        r = await self.get(f"/v1/users/{user_id}")
        assert r.status_code == 200, r.text
        return dict(r.json()["balance"])


async def create_project(client: httpx.AsyncClient, name: str = "test") -> Project:
    r = await client.post(
        "/v1/admin/projects",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    return Project(id=body["id"], key=body["api_key"]["key"], client=client)


@pytest.fixture
async def project(client: httpx.AsyncClient) -> Project:
    return await create_project(client)


@pytest.fixture
async def other_project(client: httpx.AsyncClient) -> Project:
    return await create_project(client, "other")


@pytest.fixture
async def live_project(live_url: str, client: httpx.AsyncClient) -> AsyncIterator[Project]:
    """A project whose client talks to the uvicorn server over TCP (for concurrency tests)."""
    created = await create_project(client)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=live_url, limits=limits, timeout=60) as live:
        yield Project(id=created.id, key=created.key, client=live)


async def assert_ledger_consistent(db: Database) -> None:
    """`creditd verify`: balance == Σ ledger (and every other invariant) for every account."""
    async with db.transaction() as session:
        _, violations = await verify(session)
    assert violations == [], violations
