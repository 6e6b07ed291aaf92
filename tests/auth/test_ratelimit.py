"""Rate limits per key, per project and per client address, in memory and in Redis.

Each test builds an app of its own with tight limits (the suite's app has them out of the way)
and shares the suite's database engine; windows are long (minutes to days) so that no window
boundary falls inside a test.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.auth.ratelimit import LocalStorage, RateLimits
from app.core.settings import ApiSettings, Settings
from app.main import create_app
from tests.conftest import ADMIN_TOKEN, Project, create_project

AppFactory = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


@pytest.fixture
def limited_app(settings: Settings, app: FastAPI) -> AppFactory:
    """An app with the given ``ApiSettings`` fields, and a client calling it from an address."""

    @asynccontextmanager
    async def factory(
        address: str = "127.0.0.1", **api: Any
    ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        fields = {"auth_failure_rate_limit": "1000/minute", **api}
        limited = create_app(settings.model_copy(update={"api": ApiSettings(**fields)}))
        limited.state.db = app.state.db  # the suite's engine; no lifespan needed
        transport = httpx.ASGITransport(app=limited, client=(address, 40000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield limited, client
        finally:
            await limited.state.rate_limits.close()

    return factory


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def _assert_limit_headers(r: httpx.Response, limit: int, remaining: int) -> None:
    assert r.headers["ratelimit-limit"] == str(limit)
    assert r.headers["ratelimit-remaining"] == str(remaining)
    assert int(r.headers["ratelimit-reset"]) >= 1


async def _new_key(project: Project, scopes: list[str]) -> dict[str, str]:
    r = await project.post("/v1/api-keys", {"name": "k", "scopes": scopes})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


async def test_successful_responses_carry_the_ratelimit_headers(
    limited_app: AppFactory,
) -> None:
    async with limited_app(rate_limit="5/day", project_rate_limit="100/day") as (_, client):
        project = await create_project(client)
        for used in range(1, 6):
            r = await project.get("/v1/project")
            assert r.status_code == 200
            _assert_limit_headers(r, 5, 5 - used)
        r = await project.get("/v1/project")
    assert r.status_code == 429
    assert r.json()["code"] == "rate_limited"
    _assert_limit_headers(r, 5, 0)
    assert int(r.headers["retry-after"]) >= 1


async def test_the_project_limit_is_shared_by_all_its_keys(limited_app: AppFactory) -> None:
    async with limited_app(rate_limit="100/day", project_rate_limit="4/day") as (_, client):
        project = await create_project(client)  # creating it uses no key
        second = await _new_key(project, ["read"])  # 1 of the project's 4
        assert (await project.get("/v1/project")).status_code == 200  # 2
        r = await project.get("/v1/project", headers=second)  # 3
        assert r.status_code == 200
        # The headers report the limit closest to running out: the project's.
        _assert_limit_headers(r, 4, 1)
        assert (await project.get("/v1/project", headers=second)).status_code == 200  # 4
        for headers in ({}, second):
            refused = await project.get("/v1/project", headers=headers)
            assert refused.status_code == 429
            _assert_limit_headers(refused, 4, 0)
        # Another project is not affected.
        other = await create_project(client, "other")
        assert (await other.get("/v1/project")).status_code == 200


async def test_a_key_over_its_own_limit_leaves_its_project_budget_alone(
    limited_app: AppFactory,
) -> None:
    async with limited_app(rate_limit="2/day", project_rate_limit="6/day") as (_, client):
        project = await create_project(client)
        second = await _new_key(project, ["read"])  # the admin key: 1 used; the project: 1
        statuses = [(await project.get("/v1/project")).status_code for _ in range(5)]
        assert statuses == [200, 429, 429, 429, 429]  # the project: 2 used, not 6
        statuses = [
            (await project.get("/v1/project", headers=second)).status_code for _ in range(3)
        ]
    assert statuses == [200, 200, 429]  # the project had room for both (4 of 6)


async def test_failed_authentication_is_throttled_per_client_address(
    limited_app: AppFactory, project: Project
) -> None:
    async with limited_app(address="192.0.2.7", auth_failure_rate_limit="3/day") as (
        limited,
        client,
    ):
        bad = {"Authorization": "Bearer ck_guess"}
        assert [(await client.get("/v1/project", headers=bad)).status_code for _ in range(3)] == [
            401,
            401,
            401,
        ]
        refused = await client.get("/v1/project", headers=bad)
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        _assert_limit_headers(refused, 3, 0)
        assert int(refused.headers["retry-after"]) >= 1
        # Refused before the lookup: even a real key this process has not verified yet, and
        # the operator token, are not checked from this address any more.
        assert (await client.get("/v1/project", headers=project.headers)).status_code == 429
        operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await client.get("/v1/admin/projects", headers=operator)).status_code == 429

        async with _client_from(limited, "198.51.100.9") as elsewhere:
            assert (await elsewhere.get("/v1/project", headers=bad)).status_code == 401
            assert (await elsewhere.get("/v1/project", headers=project.headers)).status_code == 200


async def test_wrong_operator_tokens_count_as_failed_authentication(
    limited_app: AppFactory,
) -> None:
    async with limited_app(address="192.0.2.8", auth_failure_rate_limit="2/day") as (_, client):
        wrong = {"Authorization": "Bearer not-the-operator-token"}
        statuses = [
            (await client.get("/v1/admin/projects", headers=wrong)).status_code for _ in range(3)
        ]
    assert statuses == [401, 401, 429]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # nothing listens there once the socket is closed


async def test_an_unreachable_redis_lets_requests_through_with_a_warning(
    limited_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    async with limited_app(rate_limit="1/day", rate_limit_storage_url=url) as (_, client):
        logging.getLogger().addHandler(caplog.handler)  # create_app() reset the root handlers
        try:
            project = await create_project(client)
            responses = [await project.get("/v1/project") for _ in range(3)]
        finally:
            logging.getLogger().removeHandler(caplog.handler)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all("ratelimit-limit" not in r.headers for r in responses)
    warnings = [r for r in caplog.records if "rate_limit_storage_unavailable" in str(r.msg)]
    assert warnings
    assert warnings[0].levelno == logging.WARNING


async def test_the_project_limit_is_shared_through_redis(
    limited_app: AppFactory, redis_url: str, redis_prefix: str
) -> None:
    shared = {
        "rate_limit": "100/minute",
        "project_rate_limit": "3/minute",
        "rate_limit_storage_url": redis_url,
        "rate_limit_key_prefix": redis_prefix,
    }
    async with limited_app(**shared) as (_, one), limited_app(**shared) as (_, two):
        project = await create_project(one)
        on_two = Project(id=project.id, key=project.key, client=two)
        assert (await project.get("/v1/project")).status_code == 200
        assert (await on_two.get("/v1/project")).status_code == 200
        r = await project.get("/v1/project")
        assert r.status_code == 200
        _assert_limit_headers(r, 3, 0)
        refused = await on_two.get("/v1/project")
    assert refused.status_code == 429
    _assert_limit_headers(refused, 3, 0)


async def test_local_storage_decides_like_the_library_memory_storage() -> None:
    item = parse("7/day")
    ours = SlidingWindowCounterRateLimiter(LocalStorage())
    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    key = uuid.uuid4().hex
    for _ in range(10):
        assert await ours.hit(item, key) == await theirs.hit(item, key)
        ours_stats = await ours.get_window_stats(item, key)
        theirs_stats = await theirs.get_window_stats(item, key)
        assert ours_stats.remaining == theirs_stats.remaining
        assert abs(ours_stats.reset_time - theirs_stats.reset_time) < 1


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_reported_windows_match_the_library_strategy(
    storage: str, request: pytest.FixtureRequest
) -> None:
    api: dict[str, Any] = {"rate_limit": "5/minute", "project_rate_limit": "9/minute"}
    if storage == "redis":
        api["rate_limit_storage_url"] = request.getfixturevalue("redis_url")
        api["rate_limit_key_prefix"] = request.getfixturevalue("redis_prefix")
    limits = RateLimits(ApiSettings(**api))
    strategy = SlidingWindowCounterRateLimiter(limits.storage)
    key_id, project_id = uuid.uuid4(), uuid.uuid4()
    item = parse("5/minute")
    try:
        for used in range(1, 8):
            decision = await limits.hit(key_id, project_id)
            assert decision is not None
            stats = await strategy.get_window_stats(item, "key", str(key_id))
            assert decision.allowed == (used <= 5)
            assert decision.limit == 5
            assert decision.remaining == stats.remaining == max(0, 5 - used)
    finally:
        await limits.close()


@pytest.mark.parametrize("start", [0.0, 2.5, 9.9])
@pytest.mark.parametrize("earlier", [0, 1, 2, 3])
@pytest.mark.parametrize("into_next", [0.0, 4.0, 9.5])
async def test_retry_after_is_the_first_second_at_which_a_request_is_admitted(
    start: float, earlier: int, into_next: float
) -> None:
    clock = FakeClock(1000.0 + start)
    limits = RateLimits(
        ApiSettings(rate_limit="3 per 10 seconds", project_rate_limit="1000/minute"), clock=clock
    )
    key_id, project_id = uuid.uuid4(), uuid.uuid4()

    async def admitted() -> bool:
        decision = await limits.hit(key_id, project_id)
        assert decision is not None
        return decision.allowed

    for _ in range(earlier):  # some requests in one window...
        assert await admitted()
    clock.now += 10 - start + into_next  # ...then into the next one
    while await admitted():  # fill what is left of the budget there
        pass
    refused = await limits.hit(key_id, project_id)
    assert refused is not None
    assert not refused.allowed
    retry_after = int(refused.headers()["Retry-After"])
    assert refused.headers()["RateLimit-Reset"] == str(retry_after)
    began = clock.now
    clock.now = began + retry_after - 1
    assert retry_after == 1 or not await admitted()  # a second early: still refused
    clock.now = began + retry_after
    assert await admitted()
