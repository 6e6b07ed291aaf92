"""Two real `creditd serve` processes on one database: key revocation and a shared Redis budget.

These are the guarantees that no single process can give: a key revoked through one process is
refused by every other within a second, and N processes sharing a Redis storage admit no more
requests together than the limit.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.fixtures.servers import creditd_servers

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _listening(client: httpx.AsyncClient, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (await client.get(f"{url}/metrics")).text
        if _metric(text, "creditd_key_cache_listener_up") == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never listened for key changes")


async def _new_project(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    r = await client.post(f"{url}/v1/admin/projects", json={"name": "p"}, headers=OPERATOR)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['api_key']['key']}"}


@pytest.fixture(scope="module")
def two_servers(database_url: str) -> Iterator[list[str]]:
    # A long cache TTL: without the notification, server B would accept the key for a minute.
    with creditd_servers(2, database_url, CREDITD_API__KEY_CACHE_TTL_SECONDS="60") as urls:
        yield urls


@pytest.fixture(scope="module")
def two_servers_on_redis(
    database_url: str, redis_url: str, redis_prefix: str
) -> Iterator[list[str]]:
    with creditd_servers(
        2,
        database_url,
        CREDITD_API__RATE_LIMIT_STORAGE_URL=redis_url,
        CREDITD_API__RATE_LIMIT_KEY_PREFIX=f"{redis_prefix}-servers",
        CREDITD_API__RATE_LIMIT="50/minute",
        CREDITD_API__PROJECT_RATE_LIMIT="1000/minute",
    ) as urls:
        yield urls


async def test_a_key_revoked_on_one_server_is_refused_by_another_within_one_second(
    two_servers: list[str],
) -> None:
    a, b = two_servers
    async with httpx.AsyncClient(timeout=10) as client:
        admin = await _new_project(client, a)
        r = await client.post(
            f"{a}/v1/api-keys", json={"name": "doomed", "scopes": ["read"]}, headers=admin
        )
        assert r.status_code == 201, r.text
        key_id, doomed = r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}
        await _listening(client, a)
        await _listening(client, b)
        # Both servers have verified (and cached) the key.
        assert (await client.get(f"{a}/v1/project", headers=doomed)).status_code == 200
        assert (await client.get(f"{b}/v1/project", headers=doomed)).status_code == 200
        heard_before = _metric(
            (await client.get(f"{b}/metrics")).text, "creditd_key_cache_invalidations_total"
        )

        assert (await client.delete(f"{a}/v1/api-keys/{key_id}", headers=admin)).status_code == 204
        revoked_at = time.monotonic()
        statuses: list[int] = []
        while time.monotonic() - revoked_at < 1.0:
            statuses.append((await client.get(f"{b}/v1/project", headers=doomed)).status_code)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - revoked_at

        assert statuses[-1] == 401, f"server B still accepted the key after {elapsed:.2f} s"
        assert set(statuses[:-1]) <= {200}
        metrics = (await client.get(f"{b}/metrics")).text
        # B learnt it from the notification (its listener stayed up), not from a lapsed cache.
        assert _metric(metrics, "creditd_key_cache_invalidations_total") > heard_before
        assert _metric(metrics, "creditd_key_cache_listener_up") == 1
        # And A refuses it too, of course.
        assert (await client.get(f"{a}/v1/project", headers=doomed)).status_code == 401


async def test_two_servers_sharing_redis_admit_no_more_than_the_limit_together(
    two_servers_on_redis: list[str],
) -> None:
    a, b = two_servers_on_redis
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        key = await _new_project(client, a)
        # 150 requests of one key (limit 50 per minute), 75 to each server, all at once.
        responses = await asyncio.gather(
            *(client.get(f"{(a, b)[i % 2]}/v1/project", headers=key) for i in range(150))
        )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50, 429: 100}
    for r in responses:
        assert r.headers["ratelimit-limit"] == "50"
        assert 0 <= int(r.headers["ratelimit-remaining"]) < 50
        assert int(r.headers["ratelimit-reset"]) >= 1
        if r.status_code == 429:
            assert r.json()["code"] == "rate_limited"
            assert r.headers["ratelimit-remaining"] == "0"
            assert int(r.headers["retry-after"]) >= 1
    # Each server alone would have let 50 of its 75 through: both refused some.
    refused_by = Counter(
        str(r.request.url).split("/v1")[0] for r in responses if r.status_code == 429
    )
    assert set(refused_by) == {a, b}
