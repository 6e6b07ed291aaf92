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
