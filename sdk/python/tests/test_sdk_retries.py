"""Retries through a faulty network produce exactly one effect, and honour Retry-After."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from conftest import BACKOFF_BASE, BACKOFF_MAX, Project
from creditd_sdk import APITimeoutError, AsyncCreditd, Creditd, RateLimited, ServiceUnavailable
from sdk_testkit import Fault, FaultProxy, ServerProcess


def _through(proxy: FaultProxy, project: Project, **options: Any) -> Creditd:
    options.setdefault("backoff_base", BACKOFF_BASE)
    options.setdefault("backoff_max", BACKOFF_MAX)
    return Creditd(project.key, base_url=proxy.url, spool=None, **options)


def _ledger(client: Creditd, user_id: str) -> list[tuple[str, Decimal, Decimal]]:
    entries = client.paginate(client.credits.list_ledger, user_id, limit=100)
    return [(e.kind, e.amount, e.held_amount) for e in entries]


def test_a_503_is_retried_with_the_same_key_and_the_grant_lands_once(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    client.users.create("u")
    proxy.add(Fault("POST", "/v1/users/u/credits", "respond", status=503))
    with _through(proxy, project) as flaky:
        grant = flaky.credits.grant("u", 5)
    assert grant.amount == Decimal(5)
    posts = proxy.requests("POST", "/credits")
    assert [(p.status, p.upstream_status) for p in posts] == [(503, None), (201, 201)]
    assert posts[0].idempotency_key is not None
    assert posts[0].idempotency_key == posts[1].idempotency_key
    assert _ledger(client, "u") == [("grant", Decimal(5), Decimal(0))]


def test_responses_lost_after_the_server_acted_are_retried_without_a_second_effect(
    priced: Creditd, project: Project, proxy: FaultProxy, live: ServerProcess
) -> None:
    priced.users.create("u")
    priced.credits.grant("u", 10)
    for path in ("/v1/transactions/start", "/complete", "/credits"):
        proxy.add(Fault("POST", path, "drop_after_forward"))
    with _through(proxy, project) as flaky:
        start = flaky.transactions.start(
            user_id="u", model="m", provisional_tokens={"input_tokens": 1000, "output_tokens": 500}
        )
        done = flaky.transactions.complete(
            start.transaction_id, success=True, finalized_tokens={"input_tokens": 700}
        )
        flaky.credits.grant("u", 1)
    for path, ok in (("/v1/transactions/start", 201), ("/complete", 200), ("/credits", 201)):
        posts = proxy.requests("POST", path)
        # The first answer was lost after the server acted; the retry got the stored response.
        assert [p.status for p in posts] == [None, ok]
        assert [p.upstream_status for p in posts] == [ok, ok]
        assert len({p.idempotency_key for p in posts}) == 1
        assert posts[0].body == posts[1].body
    assert done.credits_used == Decimal("0.7")
    assert _ledger(priced, "u") == [
        ("grant", Decimal(10), Decimal(0)),
        ("hold", Decimal(0), Decimal(2)),
        ("usage", Decimal("-0.7"), Decimal(-2)),
        ("grant", Decimal(1), Decimal(0)),
    ]
    live.verify()


async def test_async_client_retries_a_dropped_connection_once(
    priced: Creditd, project: Project, proxy: FaultProxy
) -> None:
    priced.users.create("u")
    proxy.add(Fault("POST", "/credits", "drop_before_forward"))
    async with AsyncCreditd(
        project.key, base_url=proxy.url, spool=None, backoff_base=BACKOFF_BASE
    ) as flaky:
        grant = await flaky.credits.grant("u", "2.5")
    assert grant.balance == Decimal("2.5")
    assert [p.upstream_status for p in proxy.requests("POST", "/credits")] == [None, 201]
    assert _ledger(priced, "u") == [("grant", Decimal("2.5"), Decimal(0))]


def test_a_timed_out_request_is_retried_with_the_same_key_and_acts_once(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    client.users.create("u")
    proxy.add(Fault("POST", "/credits", "delay_after_forward", delay=3.0))
    with _through(proxy, project, timeout=1.0) as slow:
        grant = slow.credits.grant("u", 4)
    posts = proxy.requests("POST", "/credits")
    assert [p.upstream_status for p in posts] == [201, 201]  # the second was a replay
    assert posts[0].idempotency_key == posts[1].idempotency_key
    assert grant.amount == Decimal(4)
    assert _ledger(client, "u") == [("grant", Decimal(4), Decimal(0))]


def test_a_timeout_with_no_retries_left_is_raised(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    proxy.add(Fault("GET", "/v1/users", "delay_after_forward", delay=3.0))
    with (
        _through(proxy, project, timeout=1.0, max_retries=0) as slow,
        pytest.raises(APITimeoutError),
    ):
        slow.users.list()


@pytest.mark.parametrize(("method", "status"), [("GET", 429), ("POST", 503)])
def test_retry_after_is_honoured(
    client: Creditd, project: Project, proxy: FaultProxy, method: str, status: int
) -> None:
    client.users.create("u")
    path = "/v1/users/u" if method == "GET" else "/v1/users/u/credits"
    proxy.add(Fault(method, path, "respond", status=status, headers={"Retry-After": "1"}))
    # Backoff alone would wait ~10 ms: a gap of a second can only come from Retry-After.
    with _through(proxy, project, backoff_base=0.01, backoff_max=0.01) as flaky:
        if method == "GET":
            flaky.users.get("u")
        else:
            flaky.credits.grant("u", 1)
    first, second = (e for e in proxy.exchanges if e.path == path)
    assert (first.status, second.status) == (status, 200 if method == "GET" else 201)
    assert second.at - first.at >= 1.0


def test_a_retry_after_beyond_the_limit_is_raised_not_waited(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    proxy.add(Fault("GET", "/v1/users", "respond", status=429, headers={"Retry-After": "120"}))
    with (
        _through(proxy, project, max_retry_after=60) as flaky,
        pytest.raises(RateLimited) as caught,
    ):
        flaky.users.list()
    assert caught.value.retry_after == 120.0
    assert len(proxy.requests("GET", "/v1/users")) == 1


def test_retries_stop_after_max_retries(
    client: Creditd, project: Project, proxy: FaultProxy
) -> None:
    client.users.create("u")
    proxy.add(Fault("POST", "/credits", "respond", status=503, times=10))
    with _through(proxy, project, max_retries=2) as flaky, pytest.raises(ServiceUnavailable):
        flaky.credits.grant("u", 1)
    assert len(proxy.requests("POST", "/credits")) == 3
    assert _ledger(client, "u") == []


async def test_a_key_in_flight_is_retried_with_the_same_key_until_the_first_finishes(
    client: Creditd, project: Project, proxy: FaultProxy, live: ServerProcess
) -> None:
    client.users.create("u")
    key = "grant-in-flight"
    # Lock the key and keep the transaction open, as a first attempt still in progress does
    # (app/idempotency/repository.py: _LOCK): its advisory lock on the key holds the key.
    conn = await asyncpg.connect(live.database_url.replace("+asyncpg", ""))
    tx = conn.transaction()
    await tx.start()
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text || ':' || $2, 0))",
        uuid.UUID(project.id),
        key,
    )
    try:
        async with AsyncCreditd(
            project.key, base_url=proxy.url, spool=None, backoff_base=0.2, max_retries=20
        ) as c:
            task = asyncio.create_task(c.credits.grant("u", 3, idempotency_key=key))
            await asyncio.to_thread(proxy.wait_for, lambda e: e.code == "idempotency_key_in_flight")
            await tx.rollback()  # the first attempt failed (a 5xx): the key is free again
            grant = await task
    finally:
        await conn.close()
    posts = proxy.requests("POST", "/credits")
    assert posts[0].code == "idempotency_key_in_flight"
    assert posts[-1].status == 201
    assert {p.idempotency_key for p in posts} == {key}
    assert grant.amount == Decimal(3)
    assert _ledger(client, "u") == [("grant", Decimal(3), Decimal(0))]


async def test_parallel_metered_calls_through_a_flaky_network_charge_each_exactly_once(
    priced: Creditd, project: Project, proxy: FaultProxy, live: ServerProcess
) -> None:
    priced.users.create("u")
    priced.credits.grant("u", 100)
    proxy.add(Fault("POST", "/v1/transactions/start", "drop_after_forward", times=3))
    proxy.add(Fault("POST", "/v1/transactions/start", "respond", status=503, times=2))
    proxy.add(Fault("POST", "/complete", "drop_after_forward", times=4))
    async with AsyncCreditd(
        project.key, base_url=proxy.url, spool=None, backoff_base=0.05, max_retries=6
    ) as flaky:

        async def call(i: int) -> None:
            async with flaky.capture_usage(
                user_id="u", model="m", provisional_tokens={"input_tokens": 2000}
            ) as cap:
                await asyncio.sleep(0.01 * (i % 3))
                cap.set_usage(input_tokens=100 * (i + 1))

        await asyncio.gather(*(call(i) for i in range(10)))
    ledger = _ledger(priced, "u")
    usage = [amount for kind, amount, _ in ledger if kind == "usage"]
    assert len(usage) == 10
    assert sorted(usage) == sorted(Decimal(-(i + 1)) / 10 for i in range(10))
    assert [kind for kind, _, _ in ledger].count("hold") == 10
    balance = priced.users.get("u").balance
    assert (balance.total, balance.held) == (Decimal("94.5"), Decimal(0))
    dropped = [e for e in proxy.exchanges if e.fault == "drop_after_forward"]
    assert len(dropped) == 7  # every injected fault fired
    live.verify()


def test_a_check_carries_no_key_and_is_still_retried(
    priced: Creditd, project: Project, proxy: FaultProxy
) -> None:
    priced.users.create("u")
    proxy.add(Fault("POST", "/v1/check", "drop_after_forward"))
    with _through(proxy, project) as flaky:
        check = flaky.usage.check(user_id="u", amount=1)
    assert (check.allowed, check.reason) == (False, "insufficient_credits")
    posts = proxy.requests("POST", "/v1/check")
    assert [(p.status, p.idempotency_key) for p in posts] == [(None, None), (200, None)]
