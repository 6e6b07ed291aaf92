"""`POST /v1/events/{id}/redeliver` and the events' `delivery_status`.

No dispatcher runs in these tests (the app has no background workers): deliveries stay as the
API or the test left them, and their rows are written here as the dispatcher would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.clock import utcnow
from app.db.session import Database
from tests.conftest import Project
from tests.webhooks.endpoint_helpers import (
    create,
    deliveries,
    execute,
    forget_endpoints,
    grant_event,
    insert_delivery,
    rows,
)

BASE = "/v1/webhook-endpoints"


@pytest.fixture
async def hooks(project: Project, db: Database) -> AsyncIterator[Project]:
    """The test's project, left without endpoints at the end."""
    yield project
    await forget_endpoints(db, project)


async def redeliver(project: Project, event_id: str, body: Any = None) -> dict[str, Any]:
    r = await project.post(f"/v1/events/{event_id}/redeliver", body)
    assert r.status_code == 202, r.text
    return dict(r.json())


async def status_of(project: Project, event_id: str) -> str:
    r = await project.get(f"/v1/events/{event_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["delivery_status"])


async def fanned_out(db: Database, event_id: str) -> None:
    """Mark the event as not for fan-out (as if the fan-out had passed it)."""
    await execute(db, "UPDATE events SET fanout_xid = NULL WHERE id = :e", e=event_id)


# --- redeliver ---------------------------------------------------------------------------------


async def test_redeliver_resets_a_failed_delivery(hooks: Project, db: Database) -> None:
    endpoint = await create(hooks)
    event_id = await grant_event(hooks)
    delivery_id = await insert_delivery(
        db,
        hooks,
        event_id=event_id,
        endpoint_id=endpoint["id"],
        status="failed",
        attempts=8,
        lease_token=uuid.uuid4(),
    )
    before = utcnow()

    answer = await redeliver(hooks, event_id)

    (shown,) = answer["deliveries"]
    assert answer["event_id"] == event_id
    assert shown["id"] == delivery_id
    assert shown["endpoint_id"] == endpoint["id"]
    assert shown["status"] == "pending"
    assert shown["attempts"] == 0
    (stored,) = await deliveries(db, event_id)
    assert str(stored["id"]) == delivery_id
    assert stored["status"] == "pending"
    assert stored["attempts"] == 0
    assert stored["lease_token"] is None
    assert before.replace(microsecond=0) <= stored["next_attempt_at"] <= utcnow()
    assert await status_of(hooks, event_id) == "pending"


async def test_redeliver_goes_to_the_enabled_subscribed_endpoints_only(
    hooks: Project, db: Database
) -> None:
    credits = await create(hooks, events=["credits.*"])
    everything = await create(hooks)
    await create(hooks, events=["payment.*"])  # not subscribed
    await create(hooks, enabled=False)  # disabled
    event_id = await grant_event(hooks)

    answer = await redeliver(hooks, event_id)

    owed = {credits["id"], everything["id"]}
    assert {d["endpoint_id"] for d in answer["deliveries"]} == owed
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in answer["deliveries"])
    stored = await deliveries(db, event_id)
    assert {str(d["endpoint_id"]) for d in stored} == owed
    assert {str(d["id"]) for d in stored} == {d["id"] for d in answer["deliveries"]}


async def test_redeliver_to_one_endpoint_sends_it_whatever_its_events(
    hooks: Project, db: Database
) -> None:
    await create(hooks)  # subscribed, but not asked for
    payments = await create(hooks, events=["payment.*"])
    event_id = await grant_event(hooks)

    answer = await redeliver(hooks, event_id, {"endpoint_id": payments["id"]})

    assert [d["endpoint_id"] for d in answer["deliveries"]] == [payments["id"]]
    assert [str(d["endpoint_id"]) for d in await deliveries(db, event_id)] == [payments["id"]]


async def test_redeliver_to_a_disabled_endpoint_is_409(hooks: Project, db: Database) -> None:
    disabled = await create(hooks, enabled=False)
    event_id = await grant_event(hooks)
    r = await hooks.post(f"/v1/events/{event_id}/redeliver", {"endpoint_id": disabled["id"]})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "webhook_endpoint_disabled"
    assert await deliveries(db, event_id) == []


async def test_redeliver_to_an_unknown_endpoint_is_404(hooks: Project) -> None:
    event_id = await grant_event(hooks)
    r = await hooks.post(f"/v1/events/{event_id}/redeliver", {"endpoint_id": str(uuid.uuid4())})
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "webhook_endpoint_not_found"


async def test_redeliver_with_no_endpoint_wanting_the_event_is_an_empty_202(
    hooks: Project, db: Database
) -> None:
    await create(hooks, events=["payment.*"])
    event_id = await grant_event(hooks)
    assert await redeliver(hooks, event_id) == {"event_id": event_id, "deliveries": []}
    assert await deliveries(db, event_id) == []


async def test_a_test_event_is_redelivered_only_to_its_endpoint(
    hooks: Project, db: Database
) -> None:
    target = await create(hooks)
    await create(hooks)  # subscribed to "*", webhook.test included
    event = (await hooks.post(f"{BASE}/{target['id']}/test")).json()
    await execute(
        db,
        "UPDATE webhook_deliveries SET status = 'failed', attempts = 8 WHERE event_id = :e",
        e=event["id"],
    )

    answer = await redeliver(hooks, event["id"])

    assert [d["endpoint_id"] for d in answer["deliveries"]] == [target["id"]]
    (stored,) = await deliveries(db, event["id"])
    assert (stored["status"], stored["attempts"]) == ("pending", 0)


async def test_a_replayed_redeliver_does_not_reset_again(hooks: Project, db: Database) -> None:
    endpoint = await create(hooks)
    event_id = await grant_event(hooks)
    key = {"Idempotency-Key": f"redeliver-{uuid.uuid4()}"}
    path = f"/v1/events/{event_id}/redeliver"
    first = await hooks.post(path, headers=key)
    assert first.status_code == 202, first.text
    await execute(db, "UPDATE webhook_deliveries SET attempts = 3 WHERE event_id = :e", e=event_id)

    again = await hooks.post(path, headers=key)

    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    (stored,) = await deliveries(db, event_id)
    assert (str(stored["endpoint_id"]), stored["attempts"]) == (endpoint["id"], 3)


# --- delivery_status ---------------------------------------------------------------------------


async def test_an_event_of_a_project_without_endpoints_is_not_sent(hooks: Project) -> None:
    event_id = await grant_event(hooks)
    assert await status_of(hooks, event_id) == "not_sent"


async def test_an_event_awaiting_fan_out_to_a_subscribed_endpoint_is_pending(
    hooks: Project, db: Database
) -> None:
    await create(hooks, events=["credits.granted"])
    event_id = await grant_event(hooks)
    (cursor,) = await rows(db, "SELECT fanout_xid FROM webhook_fanout_cursor")
    (event,) = await rows(db, "SELECT fanout_xid FROM events WHERE id = :e", e=event_id)
    assert event["fanout_xid"] > cursor["fanout_xid"]  # the fan-out has not reached it
    assert await status_of(hooks, event_id) == "pending"


async def test_an_event_no_enabled_endpoint_subscribes_to_is_not_sent(hooks: Project) -> None:
    await create(hooks, events=["payment.*"])
    await create(hooks, events=["credits.*"], enabled=False)
    event_id = await grant_event(hooks)
    assert await status_of(hooks, event_id) == "not_sent"


async def test_an_event_fanned_out_to_nobody_is_not_sent(hooks: Project, db: Database) -> None:
    await create(hooks)
    event_id = await grant_event(hooks)
    await fanned_out(db, event_id)
    assert await status_of(hooks, event_id) == "not_sent"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["succeeded"], "succeeded"),
        (["succeeded", "succeeded"], "succeeded"),
        (["pending"], "pending"),
        (["failed", "pending"], "pending"),
        (["failed"], "failed"),
        (["succeeded", "failed"], "failed"),
        (["succeeded", "canceled"], "failed"),
    ],
)
async def test_delivery_status_sums_up_the_deliveries(
    hooks: Project, db: Database, statuses: list[str], expected: str
) -> None:
    event_id = await grant_event(hooks)
    await fanned_out(db, event_id)
    for status in statuses:
        endpoint = await create(hooks)
        await insert_delivery(
            db, hooks, event_id=event_id, endpoint_id=endpoint["id"], status=status
        )
    assert await status_of(hooks, event_id) == expected


async def test_the_event_list_shows_each_delivery_status(hooks: Project, db: Database) -> None:
    endpoint = await create(hooks, events=["credits.granted"])
    sent = await grant_event(hooks, "u1")
    await fanned_out(db, sent)
    await insert_delivery(db, hooks, event_id=sent, endpoint_id=endpoint["id"], status="succeeded")
    waiting = await grant_event(hooks, "u2")
    page = (await hooks.get("/v1/events", params={"limit": 100})).json()
    statuses = {e["id"]: e["delivery_status"] for e in page["data"]}
    assert statuses[sent] == "succeeded"
    assert statuses[waiting] == "pending"
    assert set(statuses.values()) <= {"succeeded", "pending", "not_sent"}
    # Events of other types (if the flow wrote any) were never wanted by the endpoint.
    others = [e["id"] for e in page["data"] if e["type"] != "credits.granted"]
    assert all(statuses[i] == "not_sent" for i in others)
