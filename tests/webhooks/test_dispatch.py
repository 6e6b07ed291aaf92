# ruff: noqa: F811 - the fixtures imported below are parameters of the tests
"""The dispatcher delivers every event, signed, exactly as stored; retries, 410, 3xx, timeouts,
Retry-After, exhausted schedules, auto-disable and secret rotation."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.core.clock import utcnow
from app.core.secrets import SecretBox, parse_keys
from app.db.session import Database, driver
from app.events import catalogue
from app.webhooks import dispatch_repository as repo
from app.webhooks import signing
from tests.conftest import Project
from tests.fakes.webhook_receiver import Reply, webhook_receiver
from tests.helpers import complete, start
from tests.webhooks.dispatch_helpers import (  # noqa: F401 - fixtures
    _quiet_endpoints,
    add_endpoint,
    add_event,
    attempts,
    box,
    deliveries,
    dispatch_app,
    dispatch_client,
    dispatch_database_url,
    dispatch_db,
    dispatch_settings,
    dispatcher,
    endpoint,
    exact,
    fanned_out,
    fetch,
    running,
    until,
    verified,
    wh_project,
)


async def _settled(db: Database, project_id: str, count: int | None = None) -> bool:
    """Every delivery of the project finished (and ``count`` of them, if given)."""
    rows = await deliveries(db, project_id)
    if count is not None and len(rows) != count:
        return False
    return bool(rows) and all(r["status"] != "pending" for r in rows)


async def test_a_verifying_receiver_gets_every_event_of_a_flow_exactly_as_stored(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    project = wh_project
    async with webhook_receiver() as rx:
        _, secret = await add_endpoint(dispatch_db, box, project.id, rx.url + "/hooks")
        await project.price("gpt-4o", "0.5", "1.5")
        await project.user("alice", credits=100)
        await project.user("bob", credits="7.25")
        txn = await start(project, "alice", inp=1000, out=1000)
        assert (await complete(project, txn["transaction_id"], inp=800, out=400)).status_code == 200
        r = await project.post("/v1/users/bob/debits", {"amount": "1.125", "reason": "manual"})
        assert r.status_code == 201, r.text
        await project.grant("alice", "0.000001")

        stored = await fetch(
            dispatch_db,
            "SELECT id, type, user_id, seq, created_at, data::text AS data FROM events"
            " WHERE project_id = $1 ORDER BY seq",
            uuid.UUID(project.id),
        )
        assert len(stored) >= 6
        async with running(dispatcher(dispatch_db)):
            await rx.wait_for(lambda reqs: len({q.id for q in reqs}) >= len(stored))
            await until(lambda: _settled(dispatch_db, project.id, len(stored)), what="settled")

    by_id = {q.id: q for q in rx.requests}
    assert set(by_id) == {str(e["id"]) for e in stored}
    assert len(rx.requests) == len(stored)  # one attempt each: nothing sent twice
    seen: dict[str, list[int]] = defaultdict(list)
    for event in stored:
        q = by_id[str(event["id"])]
        assert q.path == "/hooks"
        assert q.headers["content-type"] == "application/json"
        body = verified(q, secret)  # standardwebhooks checks the signature and the timestamp
        assert body["id"] == str(event["id"])
        assert body["type"] == event["type"]
        assert body["user_id"] == event["user_id"]
        assert body["sequence"] == event["seq"]
        assert body["created_at"] == body["timestamp"]
        assert _instant(body["created_at"]) == event["created_at"]
        # The data exactly as stored, numbers included, and as the API shows it.
        assert exact(q.body)["data"] == exact(event["data"])
        api = await project.get(f"/v1/events/{event['id']}")
        assert api.status_code == 200
        assert exact(q.body)["data"] == exact(api.text)["data"]
        assert body["type"] == api.json()["type"]
        seen[event["user_id"]].append(body["sequence"])
    for sequences in seen.values():
        assert sequences == sorted(sequences)
    assert {"credits.granted", "transaction.started", "transaction.completed"} <= {
        e["type"] for e in stored
    }
    rows = await deliveries(dispatch_db, project.id)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert {r["attempts"] for r in rows} == {1}
    assert {r["last_status_code"] for r in rows} == {200}
    tries = await attempts(dispatch_db, project.id)
    assert len(tries) == len(stored)
    assert all(t["succeeded"] and t["status_code"] == 200 for t in tries)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_receiver_failing_the_first_attempts_gets_the_event_on_the_next_with_the_same_id(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, n: Reply(status=500, body=b"boom") if n <= 2 else Reply()
        _, secret = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        event_id = await add_event(dispatch_db, wh_project.id, "credits.granted", {"amount": 1})
        async with running(dispatcher(dispatch_db, retry_schedule_seconds=[0.1, 0.1, 0.1])):
            await until(lambda: _settled(dispatch_db, wh_project.id, 1), what="delivered")

    got = rx.by_id(str(event_id))
    assert [q.attempt for q in got] == [1, 2, 3]
    for q in got:
        assert verified(q, secret)["id"] == str(event_id)
    assert len({q.headers["webhook-id"] for q in got}) == 1
    assert got[0].body == got[1].body == got[2].body  # every retry carries the same body
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 3)
    tries = await attempts(dispatch_db, wh_project.id)
    assert [(t["attempt"], t["status_code"], t["succeeded"]) for t in tries] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert tries[0]["response_excerpt"] == "boom"
    assert tries[0]["next_attempt_at"] is not None
    assert tries[2]["next_attempt_at"] is None
    assert (await endpoint(dispatch_db, delivery["endpoint_id"]))["failing_since"] is None


async def test_410_disables_the_endpoint_cancels_its_deliveries_and_records_an_event(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as gone, webhook_receiver() as watcher:
        gone.respond = lambda _q, _n: Reply(status=410)
        doomed, _ = await add_endpoint(dispatch_db, box, wh_project.id, gone.url)
        await add_endpoint(dispatch_db, box, wh_project.id, watcher.url, ["webhook_endpoint.*"])
        for i in range(3):
            await add_event(dispatch_db, wh_project.id, "credits.granted", {"i": i})
        d = dispatcher(dispatch_db, max_in_flight_per_endpoint=1)
        await fanned_out(d, dispatch_db, wh_project.id, 3)
        assert await d.dispatch_once() == 1  # one at a time to this endpoint: the 410 first

        ep = await endpoint(dispatch_db, doomed)
        assert (ep["enabled"], ep["disabled_reason"]) == (False, "gone")
        rows = [
            r for r in await deliveries(dispatch_db, wh_project.id) if r["endpoint_id"] == doomed
        ]
        # The record transaction only disables: the backlog is canceled by the sweep.
        assert sorted(r["status"] for r in rows) == ["failed", "pending", "pending"]
        assert await d.dispatch_once() == 0  # never claimed meanwhile
        assert await d.cancel_disabled() == 2
        rows = [
            r for r in await deliveries(dispatch_db, wh_project.id) if r["endpoint_id"] == doomed
        ]
        assert sorted(r["status"] for r in rows) == ["canceled", "canceled", "failed"]
        (event,) = await fetch(
            dispatch_db,
            "SELECT *, data::text AS data_text FROM events"
            " WHERE project_id = $1 AND type = 'webhook_endpoint.disabled'",
            uuid.UUID(wh_project.id),
        )
        assert event["user_id"] is None
        data = exact(event["data_text"])
        assert (data["endpoint_id"], data["url"], data["reason"]) == (str(doomed), gone.url, "gone")
        assert data["last_status_code"] == 410
        # Exactly the catalogue's schema: no key it does not describe, none missing.
        catalogue.data_model("webhook_endpoint.disabled").model_validate_json(
            event["data_text"], strict=True, extra="forbid"
        )
        # The event goes out like any other: to the endpoint that subscribed to it.
        await fanned_out(d, dispatch_db, wh_project.id, 4)
        assert await d.dispatch_once() == 1
        (q,) = watcher.requests
        assert q.json()["type"] == "webhook_endpoint.disabled"
        assert len(gone.requests) == 1
        assert await d.dispatch_once() == 0  # nothing more for the disabled endpoint


async def test_a_redirect_counts_as_a_failure_and_is_retried(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, n: (
            Reply(status=302, headers={"location": rx.url + "/elsewhere"}) if n == 1 else Reply()
        )
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url + "/hook")
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        async with running(dispatcher(dispatch_db)):
            await until(lambda: _settled(dispatch_db, wh_project.id, 1), what="delivered")
    assert [q.path for q in rx.requests] == ["/hook", "/hook"]  # never followed
    tries = await attempts(dispatch_db, wh_project.id)
    assert [(t["status_code"], t["succeeded"]) for t in tries] == [(302, False), (200, True)]


async def test_a_slow_receiver_times_out_and_is_retried(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, n: Reply(delay=4.0) if n == 1 else Reply()
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        event_id = await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        async with running(dispatcher(dispatch_db, timeout_seconds=1, lease_seconds=3)):
            await until(lambda: _settled(dispatch_db, wh_project.id, 1), what="delivered")
    got = rx.by_id(str(event_id))
    assert len(got) >= 2
    assert got[0].body == got[-1].body
    first, *_, last = await attempts(dispatch_db, wh_project.id)
    assert (first["status_code"], first["succeeded"]) == (None, False)
    assert "timeout" in first["error"].lower()
    assert first["latency_ms"] < 4000  # cut off, not waited out
    assert (last["status_code"], last["succeeded"]) == (200, True)
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", last["attempt"])


async def test_retry_after_on_a_429_pushes_the_next_attempt_back(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(status=429, headers={"retry-after": "3"})
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        d = dispatcher(dispatch_db, retry_schedule_seconds=[0.2, 30])
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        before = utcnow()
        assert await d.dispatch_once() == 1
        assert await d.dispatch_once() == 0  # not due for 3 s, although the schedule says 0.2
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert delivery["status"] == "pending"
    assert delivery["next_attempt_at"] >= before + timedelta(seconds=3)
    (attempt,) = await attempts(dispatch_db, wh_project.id)
    assert attempt["next_attempt_at"] == delivery["next_attempt_at"]
    assert attempt["status_code"] == 429


async def test_a_retry_after_longer_than_the_schedule_is_capped_at_its_longest_wait(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(status=503, headers={"retry-after": "86400"})
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        d = dispatcher(dispatch_db, retry_schedule_seconds=[0.2, 60])
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        before = utcnow()
        assert await d.dispatch_once() == 1
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    wait = (delivery["next_attempt_at"] - before).total_seconds()
    assert 59 <= wait <= 62


async def test_an_exhausted_schedule_fails_the_delivery(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(status=500)
        endpoint_id, _ = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        async with running(dispatcher(dispatch_db, retry_schedule_seconds=[0.1, 0.1])):
            await until(lambda: _settled(dispatch_db, wh_project.id, 1), what="given up")
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "failed",
        3,
        500,
    )
    tries = await attempts(dispatch_db, wh_project.id)
    assert [t["attempt"] for t in tries] == [1, 2, 3]
    assert [t["next_attempt_at"] is None for t in tries] == [False, False, True]
    assert len(rx.requests) == 3
    ep = await endpoint(dispatch_db, endpoint_id)
    assert ep["enabled"]
    assert ep["failing_since"] is not None  # failing, not for long enough


async def test_an_endpoint_failing_longer_than_disable_after_seconds_is_disabled(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, _n: Reply(status=500)
        endpoint_id, _ = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        for i in range(3):
            await add_event(dispatch_db, wh_project.id, "credits.granted", {"i": i})
        d = dispatcher(
            dispatch_db, retry_schedule_seconds=[0.2] * 20, disable_after_seconds=0.6,
            max_in_flight_per_endpoint=1,
        )  # fmt: skip
        async with running(d):
            await until(
                lambda: _endpoint_disabled(dispatch_db, endpoint_id), what="disabled", within=10
            )

            async def swept() -> bool:  # the dispatcher's sweep cancels the rest, at once
                rows = await deliveries(dispatch_db, wh_project.id)
                return "pending" not in {r["status"] for r in rows}

            await until(swept, what="pending deliveries canceled", within=10)
    ep = await endpoint(dispatch_db, endpoint_id)
    assert ep["disabled_reason"] == "failing"
    assert ep["failing_since"] is not None
    rows = await deliveries(dispatch_db, wh_project.id)
    assert "pending" not in {r["status"] for r in rows}
    assert "canceled" in {r["status"] for r in rows}  # one at a time: others were waiting
    tries = await attempts(dispatch_db, wh_project.id)
    assert tries
    assert not any(t["succeeded"] for t in tries)
    # Disabled (updated_at) only once the run of failures was long enough.
    assert ep["updated_at"] - ep["failing_since"] > timedelta(seconds=0.6)
    (event,) = await fetch(
        dispatch_db,
        "SELECT user_id, data->>'reason' AS reason, data->>'endpoint_id' AS endpoint_id,"
        " data::text AS data_text"
        " FROM events WHERE project_id = $1 AND type = 'webhook_endpoint.disabled'",
        uuid.UUID(wh_project.id),
    )
    assert (event["user_id"], event["reason"], event["endpoint_id"]) == (
        None,
        "failing",
        str(endpoint_id),
    )
    data = catalogue.data_model("webhook_endpoint.disabled").model_validate_json(
        event["data_text"], strict=True, extra="forbid"
    )
    assert data.failing_since == ep["failing_since"]  # type: ignore[attr-defined]


async def _endpoint_disabled(db: Database, endpoint_id: uuid.UUID) -> bool:
    return not (await endpoint(db, endpoint_id))["enabled"]


async def test_a_success_ends_the_run_of_failures(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, n: Reply(status=502) if n == 1 else Reply()
        endpoint_id, _ = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        d = dispatcher(dispatch_db, retry_schedule_seconds=[0.05])
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        assert await d.dispatch_once() == 1
        assert (await endpoint(dispatch_db, endpoint_id))["failing_since"] is not None
        await until(d.dispatch_once, what="retried")
    assert (await endpoint(dispatch_db, endpoint_id))["failing_since"] is None


async def test_both_secrets_sign_during_the_grace_period_and_only_the_new_one_after(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    old = signing.new_secret()
    async with webhook_receiver() as rx:
        endpoint_id, new = await add_endpoint(
            dispatch_db, box, wh_project.id, rx.url,
            previous_secret=old, previous_expires_at=utcnow() + timedelta(hours=24),
        )  # fmt: skip
        d = dispatcher(dispatch_db)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {"n": 1})
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        assert await d.dispatch_once() == 1
        async with dispatch_db.transaction() as session:
            await driver(session).execute(
                "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 s'"
                " WHERE id = $1",
                endpoint_id,
            )
        await add_event(dispatch_db, wh_project.id, "credits.granted", {"n": 2})
        await fanned_out(d, dispatch_db, wh_project.id, 2)
        assert await d.dispatch_once() == 1

    during, after = rx.requests
    signatures = during.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for signature, secret in zip(signatures, (new, old), strict=True):
        only = {**during.headers, "webhook-signature": signature}
        assert Webhook(secret).verify(during.body, only)["data"] == {"n": 1}
    assert Webhook(old).verify(during.body, during.headers)["data"] == {"n": 1}

    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert verified(after, new)["data"] == {"n": 2}
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


async def test_a_result_recorded_after_the_lease_was_taken_over_changes_nothing(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _q, n: Reply(status=500) if n == 1 else Reply()
        await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        late, other = dispatcher(dispatch_db), dispatcher(dispatch_db)
        await fanned_out(late, dispatch_db, wh_project.id, 1)
        async with dispatch_db.transaction() as session:
            (claimed,), _ = await repo.claim(
                session, busy={}, full=[], per_endpoint=8, limit=8, scan=8, lease_seconds=60
            )
        failed = await late.attempt(claimed)  # the 500, not recorded yet
        assert failed.outcome.status_code == 500
        async with dispatch_db.transaction() as session:  # as if the lease had run out
            await driver(session).execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1",
                claimed.delivery_id,
            )
        assert await other.dispatch_once() == 1  # the 200
        await late.record([failed])

    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "succeeded",
        2,
        200,
    )
    tries = await attempts(dispatch_db, wh_project.id)
    assert sorted((t["attempt"], t["status_code"]) for t in tries) == [(1, 500), (2, 200)]
    stale = next(t for t in tries if t["status_code"] == 500)
    assert stale["next_attempt_at"] is None  # it scheduled nothing
    assert (await endpoint(dispatch_db, delivery["endpoint_id"]))["failing_since"] is None


async def test_an_endpoint_whose_secret_cannot_be_read_fails_its_attempts_without_sending(
    dispatch_db: Database, box: SecretBox, wh_project: Project
) -> None:
    async with webhook_receiver() as rx:
        endpoint_id, _ = await add_endpoint(dispatch_db, box, wh_project.id, rx.url)
        async with dispatch_db.transaction() as session:
            await driver(session).execute(
                "UPDATE webhook_endpoints SET secret_ciphertext = $2 WHERE id = $1",
                endpoint_id,
                SecretBox(parse_keys(Fernet.generate_key().decode())).encrypt(signing.new_secret()),
            )
        await add_event(dispatch_db, wh_project.id, "credits.granted", {})
        d = dispatcher(dispatch_db, retry_schedule_seconds=[60])
        await fanned_out(d, dispatch_db, wh_project.id, 1)
        assert await d.dispatch_once() == 1
    assert rx.requests == []
    (attempt,) = await attempts(dispatch_db, wh_project.id)
    assert (attempt["succeeded"], attempt["error"]) == (False, "secret_unreadable")
    (delivery,) = await deliveries(dispatch_db, wh_project.id)
    assert delivery["status"] == "pending"  # retried on schedule: the key may come back
