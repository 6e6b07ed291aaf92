"""Idempotency-Key semantics of API.md: replay, reuse conflict, business errors kept, 5xx not."""

from __future__ import annotations

import uuid

import httpx
import pytest

from app.credits import service as credits_service
from tests.conftest import ADMIN_TOKEN, Project
from tests.helpers import balance, body


async def test_same_key_and_body_replays_the_first_response_byte_for_byte(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k1"}
    first = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    second = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert (await balance(project, "u"))["total"] == 3


async def test_same_key_with_a_different_body_is_409_reused(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k2"}
    await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    r = await project.post("/v1/users/u/credits", {"amount": 4}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"
    assert (await balance(project, "u"))["total"] == 3


async def test_same_key_on_another_path_is_409_reused(project: Project) -> None:
    await project.user("u", credits=10)
    headers = {"Idempotency-Key": "k3"}
    await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    r = await project.post("/v1/users/u/debits", {"amount": 3}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"


async def test_keys_are_scoped_per_project(project: Project, other_project: Project) -> None:
    await project.user("u")
    await other_project.user("u")
    headers = {"Idempotency-Key": "shared"}
    a = await project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
    b = await other_project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert (await balance(other_project, "u"))["total"] == 1


async def test_a_business_error_is_stored_and_replayed(project: Project) -> None:
    await project.user("u", credits=1)
    headers = {"Idempotency-Key": "k4"}
    first = await project.post("/v1/users/u/debits", {"amount": 5}, headers=headers)
    assert first.status_code == 402
    await project.grant("u", 10)  # even though the debit would now succeed...
    again = await project.post("/v1/users/u/debits", {"amount": 5}, headers=headers)
    assert again.status_code == 402  # ...the first answer stands
    assert again.headers["idempotent-replayed"] == "true"
    assert (await balance(project, "u"))["total"] == 11


async def test_a_validation_error_does_not_hold_the_key(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k5"}
    bad = await project.post("/v1/users/u/credits", {"amount": -1}, headers=headers)
    assert bad.status_code == 422
    good = await project.post("/v1/users/u/credits", {"amount": -1}, headers=headers)
    assert good.status_code == 422
    assert "idempotent-replayed" not in good.headers


async def test_a_first_attempt_failing_with_5xx_does_not_hold_the_key(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k6"}
    real_grant = credits_service.grant

    async def broken(*args: object, **kwargs: object) -> object:
        await real_grant(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("crash after the write, before commit")

    monkeypatch.setattr(credits_service, "grant", broken)
    r = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert body(r)["request_id"] == r.headers["x-request-id"]
    monkeypatch.setattr(credits_service, "grant", real_grant)

    retry = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert (await balance(project, "u"))["total"] == 3, "the crashed attempt's write rolled back"


async def test_a_key_held_by_a_request_in_flight_is_409(project: Project) -> None:
    """Hold the key's advisory lock from another connection, as an in-flight request would."""
    from sqlalchemy import text

    await project.user("u")
    db = project.client._transport.app.state.db  # type: ignore[attr-defined]
    async with db.transaction() as session:
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"idem:{project.id}:busy"},
        )
        r = await project.post(
            "/v1/users/u/credits", {"amount": 1}, headers={"Idempotency-Key": "busy"}
        )
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_in_flight"
    assert (await balance(project, "u"))["total"] == 0


async def test_a_replay_is_refused_to_a_key_without_the_scope(project: Project) -> None:
    """A stored response (here: a new admin key's secret) is never replayed to a key that may
    not make the request."""
    usage = (await project.post("/v1/api-keys", {"name": "u", "scopes": ["usage"]})).json()["key"]
    headers = {"Idempotency-Key": "create-admin-key"}
    created = await project.post(
        "/v1/api-keys", {"name": "ci", "scopes": ["admin"]}, headers=headers
    )
    assert created.status_code == 201
    replay = await project.client.post(
        "/v1/api-keys",
        json={"name": "ci", "scopes": ["admin"]},
        headers={**headers, "Authorization": f"Bearer {usage}"},
    )
    assert replay.status_code == 403
    assert replay.json()["code"] == "insufficient_scope"
    assert "key" not in replay.json()


async def test_operator_project_creation_is_idempotent(client: httpx.AsyncClient) -> None:
    """A retried project creation returns the first project (and its one key), never a second."""
    key = f"create-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": key}
    first = await client.post("/v1/admin/projects", json={"name": "acme"}, headers=headers)
    again = await client.post("/v1/admin/projects", json={"name": "acme"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/v1/admin/projects", json={"name": "other"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"


async def test_operator_replay_needs_the_operator_token(client: httpx.AsyncClient) -> None:
    key = f"create-{uuid.uuid4()}"
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": key}
    assert (await client.post("/v1/admin/projects", json={"name": "a"}, headers=good)).is_success
    bad = {"Authorization": "Bearer not-the-token", "Idempotency-Key": key}
    replay = await client.post("/v1/admin/projects", json={"name": "a"}, headers=bad)
    assert replay.status_code == 401
    assert "api_key" not in replay.json()
