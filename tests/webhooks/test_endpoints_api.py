"""The webhook endpoints API: create (secret shown once, stored encrypted), list, get, patch,
delete, rotate-secret, test events, the attempts list, the endpoint limit, idempotent replay,
and `creditd rotate-secrets`. URL/pattern rules, scopes and tenants: test_endpoint_rules.py."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from cryptography.fernet import Fernet

from app import cli
from app.core.clock import utcnow
from app.core.secrets import SecretBox, SecretUnreadable, parse_keys
from app.core.settings import Settings, get_settings
from app.db.models import WebhookEndpoint
from app.db.session import Database
from app.webhooks import dispatch_repository as dispatch_repo
from app.webhooks import service as webhooks
from tests.conftest import Project
from tests.webhooks.endpoint_helpers import (
    URL,
    create,
    deliveries,
    endpoint_row,
    execute,
    forget_endpoints,
    grant_event,
    insert_attempt,
    insert_delivery,
    rows,
)

BASE = "/v1/webhook-endpoints"
FIELDS = {
    "id",
    "url",
    "events",
    "description",
    "enabled",
    "disabled_reason",
    "failing_since",
    "previous_secret_expires_at",
    "metadata",
    "created_at",
    "updated_at",
}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture
async def hooks(project: Project, db: Database) -> AsyncIterator[Project]:
    """The test's project, left without endpoints at the end."""
    yield project
    await forget_endpoints(db, project)


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    """A box with the app's keys (the development key in the test data dir)."""
    return SecretBox.from_settings(settings)


async def _signing_secrets(
    db: Database, project: Project, endpoint_id: str, box: SecretBox, now: datetime
) -> list[str]:
    async with db.transaction() as session:
        endpoint = await session.get(
            WebhookEndpoint, (uuid.UUID(project.id), uuid.UUID(endpoint_id))
        )
        assert endpoint is not None
        return webhooks.signing_secrets(endpoint, box, now)


# --- create, read ------------------------------------------------------------------------------


async def test_create_answers_the_endpoint_with_a_whsec_secret(hooks: Project) -> None:
    r = await hooks.post(BASE, {"url": URL, "description": "billing", "metadata": {"team": "core"}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == FIELDS | {"secret"}
    assert created["url"] == URL
    assert created["events"] == ["*"]
    assert created["enabled"] is True
    assert created["disabled_reason"] is None
    assert created["previous_secret_expires_at"] is None
    assert created["metadata"] == {"team": "core"}
    assert created["secret"].startswith("whsec_")
    key = base64.b64decode(created["secret"].removeprefix("whsec_"), validate=True)
    assert len(key) >= 24


async def test_the_secret_is_stored_only_encrypted(
    hooks: Project, db: Database, box: SecretBox
) -> None:
    created = await create(hooks)
    row = await endpoint_row(db, created["id"])
    secret = created["secret"]
    assert all(secret not in str(value) for value in row.values())
    assert box.decrypt(row["secret_ciphertext"]) == secret
    assert row["previous_secret_ciphertext"] is None


async def test_get_and_list_never_show_the_secret(hooks: Project) -> None:
    created = await create(hooks)
    one = await hooks.get(f"{BASE}/{created['id']}")
    listed = await hooks.get(BASE)
    assert one.status_code == listed.status_code == 200
    assert set(one.json()) == FIELDS
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    for r in (one, listed):
        assert created["secret"] not in r.text
        assert "whsec_" not in r.text


async def test_the_list_pages_oldest_first(hooks: Project) -> None:
    ids = [(await create(hooks, description=str(i)))["id"] for i in range(3)]
    first = (await hooks.get(BASE, params={"limit": 2})).json()
    assert [e["id"] for e in first["data"]] == ids[:2]
    assert first["has_more"] is True
    rest = (await hooks.get(BASE, params={"starting_after": first["next_cursor"]})).json()
    assert [e["id"] for e in rest["data"]] == ids[2:]
    assert rest["has_more"] is False


async def test_duplicate_patterns_are_dropped_in_order(hooks: Project) -> None:
    created = await create(hooks, events=["payment.*", "balance.low", "payment.*"])
    assert created["events"] == ["payment.*", "balance.low"]


async def test_an_endpoint_created_disabled_says_manual(hooks: Project) -> None:
    created = await create(hooks, enabled=False)
    assert created["enabled"] is False
    assert created["disabled_reason"] == "manual"


async def test_a_replayed_create_answers_the_same_endpoint_and_secret(hooks: Project) -> None:
    key = {"Idempotency-Key": f"hook-{uuid.uuid4()}"}
    first = await hooks.post(BASE, {"url": URL}, headers=key)
    again = await hooks.post(BASE, {"url": URL}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    listed = (await hooks.get(BASE)).json()["data"]
    assert [e["id"] for e in listed] == [first.json()["id"]]


async def test_a_project_has_at_most_50_endpoints(hooks: Project, db: Database) -> None:
    await create(hooks)
    await execute(
        db,
        "INSERT INTO webhook_endpoints (id, project_id, url, event_types, secret_ciphertext)"
        " SELECT gen_random_uuid(), :p, :u, '{*}', 'x' FROM generate_series(2, :n)",
        p=hooks.id,
        u=URL,
        n=webhooks.MAX_ENDPOINTS,
    )
    r = await hooks.post(BASE, {"url": URL})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "webhook_endpoint_limit"
    count = await rows(
        db, "SELECT count(*) AS n FROM webhook_endpoints WHERE project_id = :p", p=hooks.id
    )
    assert count[0]["n"] == webhooks.MAX_ENDPOINTS


# --- patch, delete -----------------------------------------------------------------------------


async def test_patch_changes_only_the_fields_sent(hooks: Project) -> None:
    created = await create(hooks, description="old", metadata={"a": 1, "b": 2})
    r = await hooks.patch(
        f"{BASE}/{created['id']}",
        {"events": ["credits.*"], "description": None, "metadata": {"a": None, "c": 3}},
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["events"] == ["credits.*"]
    assert patched["description"] is None
    assert patched["metadata"] == {"b": 2, "c": 3}
    assert patched["url"] == URL
    assert patched["enabled"] is True
    assert _at(patched["updated_at"]) >= _at(created["updated_at"])
    assert (await hooks.get(f"{BASE}/{created['id']}")).json() == patched


@pytest.mark.parametrize("field", ["url", "events", "enabled"])
async def test_patch_cannot_null_a_required_field(hooks: Project, field: str) -> None:
    created = await create(hooks)
    r = await hooks.patch(f"{BASE}/{created['id']}", {field: None})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"


async def test_disabling_cancels_the_pending_deliveries(hooks: Project, db: Database) -> None:
    created = await create(hooks)
    test = await hooks.post(f"{BASE}/{created['id']}/test")
    assert test.status_code == 202, test.text
    lease = uuid.uuid4()
    await execute(
        db,
        "UPDATE webhook_deliveries SET lease_token = :l WHERE event_id = :e",
        l=lease,
        e=test.json()["id"],
    )

    r = await hooks.patch(f"{BASE}/{created['id']}", {"enabled": False})

    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is False
    assert r.json()["disabled_reason"] == "manual"
    # PATCH only disables (a backlog of millions must not fit in its transaction): the
    # dispatcher's sweep cancels the pending deliveries in bounded batches.
    (delivery,) = await deliveries(db, test.json()["id"])
    assert delivery["status"] == "pending"
    async with db.transaction() as session:
        assert await dispatch_repo.cancel_disabled(session, limit=1000) >= 1
    (delivery,) = await deliveries(db, test.json()["id"])
    assert delivery["status"] == "canceled"
    assert delivery["lease_token"] is None  # an attempt in flight no longer changes it
    assert delivery["next_attempt_at"] is None


async def test_enabling_clears_the_reason_and_the_failure_run(hooks: Project, db: Database) -> None:
    created = await create(hooks)
    await execute(
        db,
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'failing',"
        " failing_since = now() - interval '6 days' WHERE id = :id",
        id=created["id"],
    )
    before = (await hooks.get(f"{BASE}/{created['id']}")).json()
    assert before["disabled_reason"] == "failing"
    assert before["failing_since"] is not None

    r = await hooks.patch(f"{BASE}/{created['id']}", {"enabled": True})

    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is True
    assert r.json()["disabled_reason"] is None
    assert r.json()["failing_since"] is None


async def test_disabling_a_disabled_endpoint_keeps_its_reason(hooks: Project, db: Database) -> None:
    created = await create(hooks)
    await execute(
        db,
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'gone' WHERE id = :id",
        id=created["id"],
    )
    r = await hooks.patch(f"{BASE}/{created['id']}", {"enabled": False})
    assert r.status_code == 200, r.text
    assert r.json()["disabled_reason"] == "gone"


async def test_a_new_url_clears_the_failure_run(hooks: Project, db: Database) -> None:
    created = await create(hooks)
    await execute(
        db, "UPDATE webhook_endpoints SET failing_since = now() WHERE id = :id", id=created["id"]
    )
    r = await hooks.patch(f"{BASE}/{created['id']}", {"url": "https://other.invalid/hook"})
    assert r.status_code == 200, r.text
    assert r.json()["url"] == "https://other.invalid/hook"
    assert r.json()["failing_since"] is None


async def test_delete_removes_the_endpoint_with_its_deliveries_and_attempts(
    hooks: Project, db: Database
) -> None:
    created = await create(hooks)
    event = (await hooks.post(f"{BASE}/{created['id']}/test")).json()
    (delivery,) = await deliveries(db, event["id"])
    await insert_attempt(
        db, hooks, delivery_id=str(delivery["id"]), endpoint_id=created["id"],
        event_id=event["id"], attempt=1, status_code=500, succeeded=False,
    )  # fmt: skip

    r = await hooks.delete(f"{BASE}/{created['id']}")

    assert r.status_code == 204
    assert r.content == b""
    assert (await hooks.get(f"{BASE}/{created['id']}")).json()["code"] == (
        "webhook_endpoint_not_found"
    )
    assert await deliveries(db, event["id"]) == []
    assert await rows(db, "SELECT id FROM webhook_attempts WHERE endpoint_id = :e",
                      e=created["id"]) == []  # fmt: skip
    again = await hooks.delete(f"{BASE}/{created['id']}")
    assert again.status_code == 404
    assert (await hooks.get(f"/v1/events/{event['id']}")).status_code == 200  # the event stays


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_an_unknown_or_malformed_id_is_404(hooks: Project, method: str) -> None:
    for endpoint_id in (str(uuid.uuid4()), "not-a-uuid"):
        r = await hooks.request(method, f"{BASE}/{endpoint_id}", {"enabled": True})
        assert r.status_code == 404, r.text
        assert r.json()["code"] == "webhook_endpoint_not_found"


# --- rotate-secret -----------------------------------------------------------------------------


async def test_rotation_keeps_the_old_secret_signing_for_the_grace(
    hooks: Project, db: Database, box: SecretBox
) -> None:
    created = await create(hooks)
    before = utcnow()
    r = await hooks.post(f"{BASE}/{created['id']}/rotate-secret")
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    ends = _at(rotated["previous_secret_expires_at"])
    assert timedelta(hours=24) <= ends - before <= timedelta(hours=24, minutes=1)

    row = await endpoint_row(db, created["id"])
    assert box.decrypt(row["secret_ciphertext"]) == rotated["secret"]
    assert box.decrypt(row["previous_secret_ciphertext"]) == created["secret"]
    assert row["previous_secret_expires_at"] == ends
    assert created["secret"] not in str(row)
    assert rotated["secret"] not in str(row)

    now = ends - timedelta(seconds=1)
    both = [rotated["secret"], created["secret"]]
    assert await _signing_secrets(db, hooks, created["id"], box, now) == both
    assert await _signing_secrets(db, hooks, created["id"], box, ends) == [rotated["secret"]]
    shown = (await hooks.get(f"{BASE}/{created['id']}")).json()
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    assert "secret" not in shown


async def test_a_rotation_with_no_grace_retires_the_old_secret_at_once(
    hooks: Project, db: Database, box: SecretBox
) -> None:
    created = await create(hooks)
    r = await hooks.post(f"{BASE}/{created['id']}/rotate-secret", {"grace_seconds": 0})
    assert r.status_code == 200, r.text
    assert r.json()["previous_secret_expires_at"] is None
    row = await endpoint_row(db, created["id"])
    assert row["previous_secret_ciphertext"] is None
    assert await _signing_secrets(db, hooks, created["id"], box, utcnow()) == [r.json()["secret"]]


async def test_a_second_rotation_within_the_grace_drops_the_oldest_secret(
    hooks: Project, db: Database, box: SecretBox
) -> None:
    created = await create(hooks)
    second = (await hooks.post(f"{BASE}/{created['id']}/rotate-secret")).json()
    third = (await hooks.post(f"{BASE}/{created['id']}/rotate-secret")).json()
    secrets = await _signing_secrets(db, hooks, created["id"], box, utcnow())
    assert secrets == [third["secret"], second["secret"]]
    assert created["secret"] not in secrets


async def test_a_grace_beyond_seven_days_is_422(hooks: Project) -> None:
    created = await create(hooks)
    r = await hooks.post(f"{BASE}/{created['id']}/rotate-secret", {"grace_seconds": 8 * 86400})
    assert r.status_code == 422, r.text


# --- test events -------------------------------------------------------------------------------


async def test_a_test_event_is_owed_to_that_endpoint_only(hooks: Project, db: Database) -> None:
    target = await create(hooks, events=["payment.*"])
    other = await create(hooks)  # subscribed to everything, webhook.test included

    r = await hooks.post(f"{BASE}/{target['id']}/test")

    assert r.status_code == 202, r.text
    event = r.json()
    assert event["type"] == "webhook.test"
    assert event["data"]["endpoint_id"] == target["id"]
    assert event["data"]["message"]
    assert event["user_id"] is None
    assert event["delivery_status"] == "pending"
    (stored,) = await rows(db, "SELECT fanout_xid FROM events WHERE id = :e", e=event["id"])
    assert stored["fanout_xid"] is None  # the fan-out never offers it to `other`
    (delivery,) = await deliveries(db, event["id"])
    assert str(delivery["endpoint_id"]) == target["id"] != other["id"]
    assert delivery["status"] == "pending"
    assert delivery["attempts"] == 0
    assert delivery["lease_token"] is None
    assert delivery["next_attempt_at"] <= utcnow()
    got = (await hooks.get(f"/v1/events/{event['id']}")).json()
    assert got == event


async def test_a_test_event_to_a_disabled_endpoint_is_409(hooks: Project, db: Database) -> None:
    created = await create(hooks, enabled=False)
    r = await hooks.post(f"{BASE}/{created['id']}/test")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "webhook_endpoint_disabled"
    tests = await rows(
        db, "SELECT id FROM events WHERE project_id = :p AND type = 'webhook.test'", p=hooks.id
    )
    assert tests == []


# --- the attempts list -------------------------------------------------------------------------


async def test_deliveries_lists_the_attempts_newest_first(hooks: Project, db: Database) -> None:
    endpoint = await create(hooks)
    event_a = await grant_event(hooks, "ua")
    event_b = await grant_event(hooks, "ub")
    first = await insert_delivery(db, hooks, event_id=event_a, endpoint_id=endpoint["id"])
    second = await insert_delivery(db, hooks, event_id=event_b, endpoint_id=endpoint["id"])
    retry_at = utcnow() + timedelta(minutes=5)
    attempts = [
        await insert_attempt(
            db, hooks, delivery_id=first, endpoint_id=endpoint["id"], event_id=event_a,
            attempt=1, status_code=None, succeeded=False, error="ConnectTimeout",
            next_attempt_at=retry_at,
        ),
        await insert_attempt(
            db, hooks, delivery_id=first, endpoint_id=endpoint["id"], event_id=event_a,
            attempt=2, status_code=200, succeeded=True,
        ),
        await insert_attempt(
            db, hooks, delivery_id=second, endpoint_id=endpoint["id"], event_id=event_b,
            attempt=1, status_code=503, succeeded=False,
        ),
    ]  # fmt: skip
    path = f"{BASE}/{endpoint['id']}/deliveries"

    page = (await hooks.get(path, params={"limit": 2})).json()

    assert [a["id"] for a in page["data"]] == attempts[:0:-1]
    assert page["has_more"] is True
    rest = (await hooks.get(path, params={"starting_after": page["next_cursor"]})).json()
    assert [a["id"] for a in rest["data"]] == [attempts[0]]
    assert rest["has_more"] is False
    oldest = rest["data"][0]
    assert oldest == {
        "id": attempts[0],
        "delivery_id": first,
        "event_id": event_a,
        "event_type": "credits.granted",
        "attempt": 1,
        "status_code": None,
        "latency_ms": 42,
        "response_excerpt": None,
        "error": "ConnectTimeout",
        "succeeded": False,
        "next_attempt_at": oldest["next_attempt_at"],
        "created_at": oldest["created_at"],
    }
    assert _at(oldest["next_attempt_at"]) == retry_at
    assert page["data"][0]["status_code"] == 503
    assert page["data"][0]["response_excerpt"] == "answer 1"

    only_a = (await hooks.get(path, params={"event_id": event_a})).json()
    assert [a["id"] for a in only_a["data"]] == [attempts[1], attempts[0]]


async def test_deliveries_of_an_endpoint_without_attempts_is_an_empty_page(
    hooks: Project,
) -> None:
    endpoint = await create(hooks)
    page = (await hooks.get(f"{BASE}/{endpoint['id']}/deliveries")).json()
    assert page == {"data": [], "has_more": False, "next_cursor": None}


async def test_deliveries_with_a_malformed_event_id_is_422(hooks: Project) -> None:
    endpoint = await create(hooks)
    r = await hooks.get(f"{BASE}/{endpoint['id']}/deliveries", params={"event_id": "x"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "event_id"]


# --- creditd rotate-secrets --------------------------------------------------------------------


def _current_key(settings: Settings) -> str:
    return (settings.data_dir / "secrets.key").read_text().strip()


async def _run_cli(monkeypatch: pytest.MonkeyPatch, database_url: str, keys: str) -> int:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CREDITD_ENV", "test")
    monkeypatch.setenv("CREDITD_PAYMENTS__SECRETS_KEY", keys)
    get_settings.cache_clear()
    try:
        # In a thread: the command runs its own event loop, as from a shell.
        return await asyncio.to_thread(cli.main, ["rotate-secrets"])
    finally:
        get_settings.cache_clear()


async def test_rotate_secrets_reencrypts_both_endpoint_secrets_with_the_first_key(
    hooks: Project,
    db: Database,
    box: SecretBox,
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    created = await create(hooks)
    rotated = (await hooks.post(f"{BASE}/{created['id']}/rotate-secret")).json()
    old_key = Fernet.generate_key().decode()
    old = SecretBox(parse_keys(old_key))
    await execute(
        db,
        "UPDATE webhook_endpoints SET secret_ciphertext = :s, previous_secret_ciphertext = :p"
        " WHERE id = :id",
        s=old.encrypt(rotated["secret"]),
        p=old.encrypt(created["secret"]),
        id=created["id"],
    )
    with pytest.raises(SecretUnreadable):
        await _signing_secrets(db, hooks, created["id"], box, utcnow())

    code = await _run_cli(monkeypatch, database_url, f"{_current_key(settings)},{old_key}")

    assert code == 0
    out = capsys.readouterr().out
    assert int(out.split(" provider account(s) and ")[1].split()[0]) >= 1
    # The current key alone reads both now: the old one can be dropped.
    secrets = await _signing_secrets(db, hooks, created["id"], box, utcnow())
    assert secrets == [rotated["secret"], created["secret"]]
    row = await endpoint_row(db, created["id"])
    for column in ("secret_ciphertext", "previous_secret_ciphertext"):
        with pytest.raises(SecretUnreadable):
            old.decrypt(row[column])


async def test_rotate_secrets_changes_nothing_when_an_endpoint_secret_is_unreadable(
    hooks: Project,
    db: Database,
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    created = await create(hooks)
    lost = SecretBox(parse_keys(Fernet.generate_key().decode()))
    await execute(
        db,
        "UPDATE webhook_endpoints SET secret_ciphertext = :s WHERE id = :id",
        s=lost.encrypt(created["secret"]),
        id=created["id"],
    )
    before = await endpoint_row(db, created["id"])
    try:
        code = await _run_cli(monkeypatch, database_url, _current_key(settings))
        assert code == 1
        assert created["id"] in capsys.readouterr().err
        assert await endpoint_row(db, created["id"]) == before
    finally:  # leave no unreadable row behind for later rotations
        assert (await hooks.delete(f"{BASE}/{created['id']}")).status_code == 204
