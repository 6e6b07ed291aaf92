# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
"""A `creditd worker` killed while its requests are in flight: another dispatcher sends them
again once the leases run out, with the same webhook-id, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from app.core.secrets import SecretBox
from app.db.session import Database, driver
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.webhook_receiver import Reply, webhook_receiver
from tests.webhooks.dispatch_helpers import (  # noqa: F401 - fixtures
    SECRETS_KEY,
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
    running,
    until,
    verified,
    wh_project,
    write_event,
)

EVENTS = 10
LEASE = 5.0


def _worker_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CREDITD_ENV": "test",
        "CREDITD_DATA_DIR": str(data_dir),
        "CREDITD_PAYMENTS__SECRETS_KEY": SECRETS_KEY,  # the key the test's box encrypts with
        "CREDITD_WEBHOOKS__ALLOW_HTTP": "true",
        "CREDITD_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "CREDITD_WEBHOOKS__TIMEOUT_SECONDS": "4",
        "CREDITD_WEBHOOKS__LEASE_SECONDS": str(LEASE),
        "CREDITD_WEBHOOKS__POLL_INTERVAL_SECONDS": "0.05",
        "CREDITD_WEBHOOKS__MAX_IN_FLIGHT_PER_ENDPOINT": str(EVENTS),
        "CREDITD_LOG__LEVEL": "WARNING",
    }


async def test_a_killed_workers_leased_deliveries_are_sent_again_by_another_dispatcher(
    dispatch_db: Database, dispatch_database_url: str, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        # The worker's requests are held (it dies waiting); the takeover's are answered.
        rx.respond = lambda _q, n: Reply(delay=6.0) if n == 1 else Reply()
        _, secret = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        async with dispatch_db.transaction() as session:
            events = [
                await write_event(driver(session), wh_project.id, "credits.granted", {"i": i})
                for i in range(EVENTS)
            ]
        with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "worker.log").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "worker",
                env=_worker_env(dispatch_database_url, Path(tmp)), stdout=out, stderr=out,
            )  # fmt: skip
            try:
                await rx.wait_for(lambda reqs: len(reqs) == EVENTS, within=90)
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
        assert proc.returncode == -signal.SIGKILL

        # Claimed (the attempt counted, the lease running), never recorded.
        rows = await deliveries(dispatch_db, wh_project.id)
        assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 1)] * EVENTS
        assert all(r["lease_token"] is not None for r in rows)
        assert await attempts(dispatch_db, wh_project.id) == []
        leased_until = {r["id"]: r["next_attempt_at"] for r in rows}

        async with running(dispatcher(dispatch_db, lease_seconds=LEASE, timeout_seconds=2)):
            await rx.wait_for(lambda reqs: len(reqs) == 2 * EVENTS, within=LEASE + 20)
            await until(lambda: _all_succeeded(dispatch_db, wh_project.id), what="recorded")

    for event_id in events:
        first, again = rx.by_id(str(event_id))
        assert (first.attempt, again.attempt) == (1, 2)
        assert first.body == again.body
        assert verified(again, secret)["id"] == str(event_id)
    rows = await deliveries(dispatch_db, wh_project.id)
    assert [(r["status"], r["attempts"]) for r in rows] == [("succeeded", 2)] * EVENTS
    tries = await attempts(dispatch_db, wh_project.id)
    assert [(t["attempt"], t["succeeded"]) for t in tries] == [(2, True)] * EVENTS
    # Taken over only once the dead worker's lease had run out.
    assert all(t["created_at"] >= leased_until[t["delivery_id"]] for t in tries)
    await assert_ledger_consistent(dispatch_db)


async def _all_succeeded(db: Database, project_id: str) -> bool:
    rows = await deliveries(db, project_id)
    return bool(rows) and all(r["status"] == "succeeded" for r in rows)
