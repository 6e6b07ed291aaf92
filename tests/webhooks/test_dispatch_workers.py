# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
"""`creditd serve` runs the dispatcher with its in-process background jobs, unless
``webhooks.dispatch_in_process`` is off (`creditd worker` always runs it: see
test_dispatch_processes.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app import main
from app.core.secrets import SecretBox
from app.core.settings import Settings
from app.db.session import Database
from app.webhooks.dispatcher import cancel_and_wait
from tests.conftest import Project
from tests.fakes.webhook_receiver import webhook_receiver
from tests.webhooks.dispatch_helpers import (  # noqa: F401 - fixtures
    _quiet_endpoints,
    add_endpoint,
    add_event,
    box,
    dispatch_app,
    dispatch_client,
    dispatch_database_url,
    dispatch_db,
    dispatch_settings,
    dispatcher,
    fast_webhooks,
    verified,
    wh_project,
)


async def test_serve_with_in_process_workers_delivers_events(
    dispatch_settings: Settings, dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    settings = dispatch_settings.model_copy(update={"webhooks": fast_webhooks()})
    async with webhook_receiver() as rx:
        _, secret = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        event_id = await add_event(dispatch_db, wh_project.id, "credits.granted", {"n": 1})
        served = main.create_app(settings, run_background=True)
        async with served.router.lifespan_context(served):
            (got,) = await rx.wait_for(lambda reqs: len(reqs) == 1, within=30)
    assert verified(got, secret)["id"] == str(event_id)


@pytest.mark.parametrize("in_process", [True, False])
async def test_serve_runs_the_dispatcher_only_when_dispatch_in_process_is_on(
    dispatch_settings: Settings, monkeypatch: pytest.MonkeyPatch, in_process: bool
) -> None:
    asked: list[bool] = []

    async def run_workers(_db: Database, _settings: Settings, **kw: Any) -> None:
        asked.append(kw["dispatch_webhooks"])
        await asyncio.Event().wait()

    monkeypatch.setattr(main, "run_workers", run_workers)
    hooks = fast_webhooks(dispatch_in_process=in_process)
    served = main.create_app(
        dispatch_settings.model_copy(update={"webhooks": hooks}), run_background=True
    )
    async with served.router.lifespan_context(served):
        await asyncio.sleep(0)
    assert asked == [in_process]


async def test_a_claim_loop_cancelled_as_it_is_kicked_stops(dispatch_db: Database) -> None:
    """On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives as its
    awaitable completes; the idle wait of the claim loop must not lose its stop that way."""
    d = dispatcher(dispatch_db, poll_interval_seconds=30)
    loop = asyncio.create_task(d._claim_loop())
    try:
        await asyncio.sleep(0.5)  # it claimed nothing and waits to be kicked
        assert not loop.done()
        d._kick.set()
        loop.cancel()  # in the same tick as the kick
        await asyncio.wait({loop}, timeout=5)
        assert loop.cancelled()
    finally:
        await cancel_and_wait([loop])


async def test_cancel_and_wait_stops_a_task_that_swallows_one_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does on 3.11
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait([task], every=0.05)
    assert swallowed.is_set()
    assert task.cancelled()
