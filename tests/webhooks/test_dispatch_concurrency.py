# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
"""Dispatchers racing on one database send each attempt once; limits per endpoint hold and a
slow endpoint does not hold the others up."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.secrets import SecretBox
from app.core.settings import Settings
from app.db.engine import create_engine
from app.db.session import Database, driver
from app.webhooks.dispatcher import Dispatcher
from app.webhooks.sender import Outcome, Sender
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.webhook_receiver import Reply, webhook_receiver
from tests.webhooks.dispatch_helpers import (  # noqa: F401 - fixtures
    _quiet_endpoints,
    add_endpoint,
    attempts,
    box,
    deliveries,
    dispatch_app,
    dispatch_client,
    dispatch_database_url,
    dispatch_db,
    dispatch_settings,
    dispatcher,
    fast_webhooks,
    running,
    until,
    wh_project,
    write_event,
)


class CountingSender(Sender):
    """The real sender, counting what it sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        self.sent += 1
        return await super().send(url, headers, body)


@pytest.fixture
async def two_pools(dispatch_settings: Settings) -> AsyncIterator[tuple[Database, Database]]:
    """Two engines, as two worker processes would have."""
    a = Database(create_engine(dispatch_settings.database, pool_size=4))
    b = Database(create_engine(dispatch_settings.database, pool_size=4))
    try:
        yield a, b
    finally:
        await a.dispose()
        await b.dispose()


async def _events(db: Database, project_id: str, count: int) -> list[uuid.UUID]:
    async with db.transaction() as session:
        return [
            await write_event(driver(session), project_id, "credits.granted", {"i": i})
            for i in range(count)
        ]


async def _settled(db: Database, project_id: str, count: int) -> bool:
    rows = await deliveries(db, project_id)
    return len(rows) == count and all(r["status"] != "pending" for r in rows)


async def test_two_dispatchers_send_each_event_once_to_each_endpoint(
    dispatch_db: Database,
    two_pools: tuple[Database, Database],
    box: SecretBox,
    wh_project: Project,
) -> None:
    # Generous timeouts: the receiver shares this busy event loop with both dispatchers.
    settings = fast_webhooks(max_in_flight_per_endpoint=16, timeout_seconds=5, lease_seconds=10)
    async with webhook_receiver() as rx:
        endpoints = [
            (await add_endpoint(dispatch_db, box, wh_project.id, rx.url + path))[0]
            for path in ("/a", "/b")
        ]
        events = await _events(dispatch_db, wh_project.id, 200)
        senders = [CountingSender(settings), CountingSender(settings)]
        pair = [
            Dispatcher(pool, settings, box, sender)
            for pool, sender in zip(two_pools, senders, strict=True)
        ]
        try:
            async with running(*pair):
                await until(
                    lambda: _settled(dispatch_db, wh_project.id, 400), within=60, what="settled"
                )
        finally:
            for s in senders:
                await s.aclose()

    # Each delivery reached its endpoint exactly as often as it was attempted (once, unless
    # an attempt timed out on a busy machine), so no dispatcher sent what another had claimed.
    paths = {endpoints[0]: "/a", endpoints[1]: "/b"}
    per_target = Counter((q.path, q.id) for q in rx.requests)
    rows = await deliveries(dispatch_db, wh_project.id)
    assert {r["status"] for r in rows} == {"succeeded"}
    want = {(paths[r["endpoint_id"]], str(r["event_id"])): r["attempts"] for r in rows}
    assert set(per_target) == set(want)
    # An attempt that timed out may or may not have reached the receiver; none arrived twice
    # without being attempted twice.
    assert all(1 <= per_target[k] <= want[k] for k in want), (per_target, want)
    assert {q.id for q in rx.requests} == {str(e) for e in events}
    tries = await attempts(dispatch_db, wh_project.id)
    assert len(tries) == sum(s.sent for s in senders) == sum(r["attempts"] for r in rows)
    assert Counter(t["succeeded"] for t in tries)[True] == 400
    if all(t["succeeded"] for t in tries):  # the usual case: one attempt each, one request
        assert set(per_target.values()) == {1}
    assert all(s.sent > 0 for s in senders), [s.sent for s in senders]  # both did work
    await assert_ledger_consistent(dispatch_db)


async def test_a_slow_endpoint_gets_at_most_its_share_and_does_not_hold_up_the_others(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    delay, cap = 0.4, 2
    async with webhook_receiver() as slow, webhook_receiver() as fast:
        slow.respond = lambda _q, _n: Reply(delay=delay)
        await add_endpoint(dispatch_db, box, wh_project.id, slow.url)
        await add_endpoint(dispatch_db, box, wh_project.id, fast.url)
        await _events(dispatch_db, wh_project.id, 12)
        d = dispatcher(
            dispatch_db, max_in_flight=4, max_in_flight_per_endpoint=cap, timeout_seconds=2,
            lease_seconds=10,
        )  # fmt: skip
        async with running(d):
            await fast.wait_for(lambda reqs: len(reqs) == 12, within=30)
            # The fast endpoint had all its events while the slow one was still busy.
            slow_done = len(slow.requests)
            assert slow_done < 12
            await until(lambda: _settled(dispatch_db, wh_project.id, 24), within=30)
    arrivals = sorted(q.at for q in slow.requests)
    assert len(arrivals) == 12
    # At most `cap` at once: request i + cap can only leave once one of the cap before it
    # was answered, `delay` after it arrived.
    for i in range(len(arrivals) - cap):
        assert arrivals[i + cap] - arrivals[i] >= delay * 0.9, (i, arrivals)
    rows = await deliveries(dispatch_db, wh_project.id)
    assert {r["status"] for r in rows} == {"succeeded"}
