"""Tenant isolation: a key sees its own project only; another project's ids answer 404.

Project A owns a user with credits, a pending and a completed transaction, a grant, prices,
an extra API key and events. Project B (and its admin key) must not be able to read, change
or even detect any of them, and its own usage for the same user id stays in B.
Also covered: the authentication and scope edges of every key.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, Project

PROBLEM_JSON = "application/problem+json"
USER = "u_a"
MODEL_ONLY_IN_A = "only-in-a"
MODEL_ONLY_IN_B = "only-in-b"


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with this status and slug."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"/errors/{code}"
    return body


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


@dataclass
class World:
    a: Project
    b: Project
    pending_id: str
    completed_id: str
    grant_id: str
    key_id: str  # A's extra (read) key
    event_id: str
    b_txn_id: str
    b_key_id: str


async def _start(p: Project, user_id: str, model: str, inp: int, out: int) -> dict[str, Any]:
    r = await p.post(
        "/v1/transactions/start",
        {
            "user_id": user_id,
            "model": model,
            "provisional_tokens": {"input_tokens": inp, "output_tokens": out},
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _create_key(p: Project, scopes: list[str], **extra: Any) -> dict[str, Any]:
    r = await p.post("/v1/api-keys", {"name": f"key-{'-'.join(scopes)}", "scopes": scopes, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _ids(p: Project, path: str, **params: Any) -> list[str]:
    r = await p.get(path, params={"limit": 100, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["has_more"] is False
    return [str(item["id"]) for item in body["data"]]


@pytest.fixture
async def world(project: Project, other_project: Project) -> World:
    a, b = project, other_project
    await a.price("_default", 1, 10)
    await a.price("gpt-4o", 2, 20)
    await a.price(MODEL_ONLY_IN_A, 3, 30)
    await a.user(USER)
    grant = await a.grant(USER, 100)
    pending = await _start(a, USER, "gpt-4o", 100, 100)  # hold 2.2
    assert pending["continue"] is True
    done = await _start(a, USER, "gpt-4o", 100, 100)
    r = await a.post(
        f"/v1/transactions/{done['transaction_id']}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 500, "output_tokens": 500}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    key = await _create_key(a, ["read"])
    events = await _ids(a, "/v1/events")
    assert events, "project A recorded no events"

    # B's own objects, so that its lists are not trivially empty.
    await b.price(MODEL_ONLY_IN_B, 1, 1)
    await b.user("u_b", credits=10)
    b_txn = await _start(b, "u_b", MODEL_ONLY_IN_B, 1000, 0)
    b_key = await _create_key(b, ["read"])
    return World(
        a=a,
        b=b,
        pending_id=pending["transaction_id"],
        completed_id=done["transaction_id"],
        grant_id=grant["id"],
        key_id=key["id"],
        event_id=events[0],
        b_txn_id=b_txn["transaction_id"],
        b_key_id=b_key["id"],
    )


async def snapshot(w: World) -> dict[str, Any]:
    """Everything of A's that a foreign call could have touched, as A's key sees it."""
    a = w.a
    out: dict[str, Any] = {}
    for name, path in {
        "user": f"/v1/users/{USER}",
        "ledger": f"/v1/users/{USER}/ledger?limit=100",
        "grants": f"/v1/users/{USER}/grants?limit=100",
        "pending": f"/v1/transactions/{w.pending_id}",
        "completed": f"/v1/transactions/{w.completed_id}",
        "transactions": "/v1/transactions?limit=100",
        "models": "/v1/models?limit=100",
        "keys": "/v1/api-keys?limit=100",
        "events": "/v1/events?limit=100",
    }.items():
        r = await a.get(path)
        assert r.status_code == 200, (path, r.text)
        out[name] = r.json()
    return out


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # template over World's ids
    body: dict[str, Any] | None
    code: str  # the 404 slug
    owner_status: int  # what A's own key gets for the same call: proves the id is real

    def url(self, w: World) -> str:
        return self.path.format(
            user=USER,
            pending=w.pending_id,
            completed=w.completed_id,
            key=w.key_id,
            event=w.event_id,
            model=MODEL_ONLY_IN_A,
        )


ROUTES = {
    "users-get": Route("GET", "/v1/users/{user}", None, "user_not_found", 200),
    "users-patch": Route(
        "PATCH", "/v1/users/{user}", {"metadata": {"plan": "x"}}, "user_not_found", 200
    ),
    # A's user has a pending transaction, so A itself gets a 409 (which still proves it exists).
    "users-delete": Route("DELETE", "/v1/users/{user}", None, "user_not_found", 409),
    "users-credits": Route(
        "POST", "/v1/users/{user}/credits", {"amount": 5}, "user_not_found", 201
    ),
    "users-debits": Route("POST", "/v1/users/{user}/debits", {"amount": 1}, "user_not_found", 201),
    "users-grants": Route("GET", "/v1/users/{user}/grants", None, "user_not_found", 200),
    "users-ledger": Route("GET", "/v1/users/{user}/ledger", None, "user_not_found", 200),
    "transactions-complete": Route(
        "POST",
        "/v1/transactions/{pending}/complete",
        {"success": True},
        "transaction_not_found",
        200,
    ),
    "transactions-complete-completed": Route(
        "POST",
        "/v1/transactions/{completed}/complete",
        {"success": False},
        "transaction_not_found",
        409,
    ),
    "transactions-extend": Route(
        "POST",
        "/v1/transactions/{pending}/extend",
        {"hold_ttl_seconds": 3600},
        "transaction_not_found",
        200,
    ),
    "transactions-refund": Route(
        "POST",
        "/v1/transactions/{completed}/refund",
        {"amount": 0.5},
        "transaction_not_found",
        201,
    ),
    "transactions-get-pending": Route(
        "GET", "/v1/transactions/{pending}", None, "transaction_not_found", 200
    ),
    "transactions-get-completed": Route(
        "GET", "/v1/transactions/{completed}", None, "transaction_not_found", 200
    ),
    "models-get": Route("GET", "/v1/models/{model}", None, "model_not_found", 200),
    "models-delete": Route("DELETE", "/v1/models/{model}", None, "model_not_found", 204),
    "api-keys-revoke": Route("DELETE", "/v1/api-keys/{key}", None, "api_key_not_found", 204),
    "events-get": Route("GET", "/v1/events/{event}", None, "event_not_found", 200),
}


async def call(p: Project, route: Route, w: World) -> httpx.Response:
    return await p.client.request(route.method, route.url(w), json=route.body, headers=p.headers)


@pytest.mark.parametrize("name", list(ROUTES))
async def test_foreign_id_answers_404_while_the_owner_finds_it(world: World, name: str) -> None:
    route = ROUTES[name]
    foreign = await call(world.b, route, world)
    body = assert_problem(foreign, 404, route.code)
    assert body["instance"] == route.url(world)

    owner = await call(world.a, route, world)
    assert owner.status_code == route.owner_status, owner.text


async def test_foreign_id_calls_leave_the_owner_state_unchanged(world: World) -> None:
    before = await snapshot(world)
    for route in ROUTES.values():
        r = await call(world.b, route, world)
        assert r.status_code == 404, (route, r.text)
    after = await snapshot(world)
    assert after == before
    assert after["pending"]["status"] == "pending"
    assert after["completed"]["status"] == "completed"
    assert dec(after["completed"]["refunded_total"]) == 0
    assert await world.a.balance(USER) == before["user"]["balance"]


async def test_foreign_id_calls_leave_the_foreign_project_unchanged(world: World) -> None:
    """B's failed calls must not have created anything in B either (e.g. a user `u_a`)."""
    for route in ROUTES.values():
        await call(world.b, route, world)
    assert_problem(await world.b.get(f"/v1/users/{USER}"), 404, "user_not_found")
    assert await _ids(world.b, "/v1/users") == ["u_b"]
    assert await _ids(world.b, "/v1/transactions") == [world.b_txn_id]


async def test_foreign_key_still_works_for_its_owner_after_revoke_attempt(world: World) -> None:
    r = await world.b.delete(f"/v1/api-keys/{world.key_id}")
    assert_problem(r, 404, "api_key_not_found")
    keys = {k["id"]: k for k in (await world.a.get("/v1/api-keys?limit=100")).json()["data"]}
    assert keys[world.key_id]["revoked_at"] is None


@pytest.mark.parametrize(
    ("path", "b_only"),
    [
        pytest.param("/v1/users", {"u_b"}, id="users"),
        pytest.param("/v1/models", {MODEL_ONLY_IN_B}, id="models"),
    ],
)
async def test_named_lists_show_only_the_keys_own_objects(
    world: World, path: str, b_only: set[str]
) -> None:
    assert set(await _ids(world.a, path)).isdisjoint(b_only)
    assert set(await _ids(world.b, path)) == b_only


async def test_transaction_list_shows_only_the_keys_own_transactions(world: World) -> None:
    a_ids = set(await _ids(world.a, "/v1/transactions"))
    assert {world.pending_id, world.completed_id} <= a_ids
    assert await _ids(world.b, "/v1/transactions") == [world.b_txn_id]


async def test_transaction_list_filtered_by_a_foreign_user_id_is_empty(world: World) -> None:
    assert await _ids(world.b, "/v1/transactions", user_id=USER) == []
    assert len(await _ids(world.a, "/v1/transactions", user_id=USER)) == 2


async def test_api_key_list_shows_only_the_keys_own_keys(world: World) -> None:
    a_ids = set(await _ids(world.a, "/v1/api-keys"))
    b_ids = set(await _ids(world.b, "/v1/api-keys"))
    assert world.key_id in a_ids
    assert world.b_key_id in b_ids
    assert len(b_ids) == 2  # B's bootstrap admin key and its read key
    assert a_ids.isdisjoint(b_ids)


async def test_event_list_shows_only_the_keys_own_events(world: World) -> None:
    a_ids = set(await _ids(world.a, "/v1/events"))
    r = await world.b.get("/v1/events", params={"limit": 100})
    assert r.status_code == 200, r.text
    b_events = r.json()["data"]
    assert b_events, "B recorded no events of its own"
    assert a_ids.isdisjoint({e["id"] for e in b_events})
    assert {e["user_id"] for e in b_events} <= {"u_b", None}
    assert await _ids(world.b, "/v1/events", user_id=USER) == []


async def test_usage_for_a_shared_user_id_charges_the_callers_own_user(world: World) -> None:
    a, b = world.a, world.b
    before = await snapshot(world)

    # B's first usage call for `u_a` auto-creates B's own (empty) u_a: denied, nothing held.
    denied = await _start(b, USER, MODEL_ONLY_IN_B, 1000, 0)
    assert denied["continue"] is False
    assert denied["reason"] == "insufficient_credits"
    assert await b.balance(USER) == {"available": 0, "held": 0, "total": 0}

    await b.grant(USER, 7)
    started = await _start(b, USER, MODEL_ONLY_IN_B, 1000, 0)  # hold 1
    assert started["continue"] is True
    r = await b.post(
        f"/v1/transactions/{started['transaction_id']}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 2000, "output_tokens": 0}},
    )
    assert r.status_code == 200, r.text
    assert await b.balance(USER) == {"available": 5, "held": 0, "total": 5}

    assert await snapshot(world) == before
    assert dec(before["user"]["balance"]["available"]) == Decimal("86.8")  # 100 - 2.2 - 11
    assert_problem(
        await a.get(f"/v1/transactions/{started['transaction_id']}"), 404, "transaction_not_found"
    )


async def test_idempotency_keys_are_scoped_per_project(world: World) -> None:
    a, b = world.a, world.b
    idem = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    first = await a.post(f"/v1/users/{USER}/credits", {"amount": 3}, headers=idem)
    assert first.status_code == 201, first.text
    # Same key in B with another body: neither a replay of A's response nor a 409.
    other = await b.post("/v1/users/u_b/credits", {"amount": 4}, headers=idem)
    assert other.status_code == 201, other.text
    assert "idempotent-replayed" not in other.headers
    assert other.json()["id"] != first.json()["id"]
    assert dec(other.json()["balance"]) == Decimal(13)


# --- authentication -------------------------------------------------------------------------


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/users"), 401, "invalid_api_key")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Bearer ck_not_a_real_key"}, id="bearer"),
        pytest.param({"X-API-Key": "ck_not_a_real_key"}, id="x-api-key"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"Authorization": f"Bearer {ADMIN_TOKEN}"}, id="operator-token"),
    ],
)
async def test_unknown_key_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert_problem(await client.get("/v1/users", headers=headers), 401, "invalid_api_key")


async def test_revoked_key_is_401(project: Project) -> None:
    key = await _create_key(project, ["read"])
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert (await project.client.get("/v1/users", headers=auth)).status_code == 200

    r = await project.delete(f"/v1/api-keys/{key['id']}")
    assert r.status_code == 204, r.text
    assert_problem(await project.client.get("/v1/users", headers=auth), 401, "invalid_api_key")


async def test_revoking_a_revoked_key_is_404(project: Project) -> None:
    key = await _create_key(project, ["read"])
    assert (await project.delete(f"/v1/api-keys/{key['id']}")).status_code == 204
    assert_problem(await project.delete(f"/v1/api-keys/{key['id']}"), 404, "api_key_not_found")


async def test_expired_key_is_401(project: Project) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    key = await _create_key(project, ["read"], expires_at=expires.isoformat())
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert (await project.client.get("/v1/users", headers=auth)).status_code == 200

    await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    assert_problem(await project.client.get("/v1/users", headers=auth), 401, "invalid_api_key")


async def test_key_with_expiry_in_the_past_cannot_be_created(project: Project) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    r = await project.post("/v1/api-keys", {"name": "old", "scopes": ["read"], "expires_at": past})
    assert_problem(r, 422, "validation_error")
    assert len(await _ids(project, "/v1/api-keys")) == 1


async def test_x_api_key_header_authenticates_like_bearer(project: Project) -> None:
    auth = {"X-API-Key": project.key}
    r = await project.client.post("/v1/users", json={"id": "u_x"}, headers=auth)
    assert r.status_code == 201, r.text
    r = await project.client.get("/v1/users/u_x", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "u_x"


async def test_x_project_id_of_own_project_is_accepted(project: Project) -> None:
    r = await project.get("/v1/project", headers={"X-Project-Id": project.id})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == project.id


@pytest.mark.parametrize("which", ["other-project", "random-uuid", "garbage"])
async def test_x_project_id_of_another_project_is_403(
    project: Project, other_project: Project, which: str
) -> None:
    value = {
        "other-project": other_project.id,
        "random-uuid": str(uuid.uuid4()),
        "garbage": "not-a-project",
    }[which]
    r = await project.post("/v1/users", {"id": "u_m"}, headers={"X-Project-Id": value})
    assert_problem(r, 403, "project_mismatch")
    assert_problem(await project.get("/v1/users/u_m"), 404, "user_not_found")


# --- scopes ---------------------------------------------------------------------------------


@pytest.fixture
async def scoped(project: Project) -> Project:
    """A project with a priced model, a funded user `u_s` and a pending transaction."""
    await project.price("_default", 1, 10)
    await project.user("u_s", credits=100)
    return project


async def _keyed(p: Project, scopes: list[str]) -> Project:
    key = await _create_key(p, scopes)
    return Project(id=p.id, key=key["key"], client=p.client)


WRITES = {
    "create-user": ("POST", "/v1/users", {"id": "u_new"}),
    "grant": ("POST", "/v1/users/u_s/credits", {"amount": 1}),
    "debit": ("POST", "/v1/users/u_s/debits", {"amount": 1}),
    "start": ("POST", "/v1/transactions/start", {"user_id": "u_s", "model": "m"}),
    "check": ("POST", "/v1/check", {"user_id": "u_s", "amount": 1}),
    "patch-user": ("PATCH", "/v1/users/u_s", {"metadata": {"a": 1}}),
    "delete-user": ("DELETE", "/v1/users/u_s", None),
    "put-model": ("PUT", "/v1/models/m", {"input_price_per_1k": 1, "output_price_per_1k": 1}),
    "delete-model": ("DELETE", "/v1/models/_default", None),
    "patch-project": ("PATCH", "/v1/project", {"name": "renamed"}),
    "create-key": ("POST", "/v1/api-keys", {"name": "k", "scopes": ["admin"]}),
}


@pytest.mark.parametrize("name", list(WRITES))
async def test_read_key_cannot_write(scoped: Project, name: str) -> None:
    before = await scoped.get("/v1/users?limit=100")
    reader = await _keyed(scoped, ["read"])
    method, path, body = WRITES[name]
    r = await reader.client.request(method, path, json=body, headers=reader.headers)
    assert_problem(r, 403, "insufficient_scope")
    assert (await scoped.get("/v1/users?limit=100")).json() == before.json()
    assert (await scoped.get("/v1/models/_default")).status_code == 200


@pytest.mark.parametrize(
    "path", ["/v1/users", "/v1/users/u_s", "/v1/users/u_s/ledger", "/v1/transactions", "/v1/models"]
)
async def test_read_key_can_read(scoped: Project, path: str) -> None:
    reader = await _keyed(scoped, ["read"])
    r = await reader.get(path)
    assert r.status_code == 200, r.text


async def test_read_key_cannot_manage_api_keys(scoped: Project) -> None:
    reader = await _keyed(scoped, ["read"])
    assert_problem(await reader.get("/v1/api-keys"), 403, "insufficient_scope")


async def test_usage_key_may_start_a_transaction(scoped: Project) -> None:
    usage = await _keyed(scoped, ["usage"])
    body = await _start(usage, "u_s", "gpt-4o", 1000, 0)
    assert body["continue"] is True
    assert dec(body["hold_amount"]) == 1


async def test_usage_key_may_complete_and_extend_a_transaction(scoped: Project) -> None:
    usage = await _keyed(scoped, ["usage"])
    txn = (await _start(scoped, "u_s", "gpt-4o", 1000, 0))["transaction_id"]
    r = await usage.post(f"/v1/transactions/{txn}/extend", {"hold_ttl_seconds": 900})
    assert r.status_code == 200, r.text
    r = await usage.post(f"/v1/transactions/{txn}/complete", {"success": True})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


async def test_usage_key_may_check(scoped: Project) -> None:
    usage = await _keyed(scoped, ["usage"])
    r = await usage.post("/v1/check", {"user_id": "u_s", "amount": 5})
    assert r.status_code == 200, r.text
    assert r.json()["allowed"] is True


async def test_usage_key_may_get_a_user(scoped: Project) -> None:
    usage = await _keyed(scoped, ["usage"])
    r = await usage.get("/v1/users/u_s")
    assert r.status_code == 200, r.text
    assert dec(r.json()["balance"]["available"]) == 100


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v1/transactions", None, id="list-transactions"),
        pytest.param("POST", "/v1/users", {"id": "u_new"}, id="create-user"),
        pytest.param("GET", "/v1/users", None, id="list-users"),
        pytest.param("GET", "/v1/users/u_s/ledger", None, id="ledger"),
        pytest.param("POST", "/v1/users/u_s/credits", {"amount": 1}, id="grant"),
        pytest.param("POST", "/v1/users/u_s/debits", {"amount": 1}, id="debit"),
        pytest.param("GET", "/v1/models", None, id="list-models"),
        pytest.param(
            "PUT",
            "/v1/models/x",
            {"input_price_per_1k": 0, "output_price_per_1k": 0},
            id="put-model",
        ),
        pytest.param("GET", "/v1/events", None, id="list-events"),
        pytest.param("GET", "/v1/project", None, id="get-project"),
    ],
)
async def test_usage_key_is_403_outside_the_usage_routes(
    scoped: Project, method: str, path: str, body: dict[str, Any] | None
) -> None:
    usage = await _keyed(scoped, ["usage"])
    r = await usage.client.request(method, path, json=body, headers=usage.headers)
    assert_problem(r, 403, "insufficient_scope")
    assert await scoped.balance("u_s") == {"available": 100, "held": 0, "total": 100}


async def test_usage_key_cannot_get_or_refund_a_transaction(scoped: Project) -> None:
    usage = await _keyed(scoped, ["usage"])
    txn = (await _start(scoped, "u_s", "gpt-4o", 1000, 0))["transaction_id"]
    assert (await usage.post(f"/v1/transactions/{txn}/complete", {"success": True})).is_success
    assert_problem(await usage.get(f"/v1/transactions/{txn}"), 403, "insufficient_scope")
    r = await usage.post(f"/v1/transactions/{txn}/refund", {})
    assert_problem(r, 403, "insufficient_scope")
    assert await scoped.balance("u_s") == {"available": 99, "held": 0, "total": 99}


async def test_write_key_cannot_manage_api_keys_or_project(scoped: Project) -> None:
    writer = await _keyed(scoped, ["write"])
    assert (await writer.post("/v1/users", {"id": "u_w"})).status_code == 201
    assert_problem(await writer.get("/v1/api-keys"), 403, "insufficient_scope")
    r = await writer.post("/v1/api-keys", {"name": "k", "scopes": ["admin"]})
    assert_problem(r, 403, "insufficient_scope")
    assert_problem(await writer.patch("/v1/project", {"name": "x"}), 403, "insufficient_scope")


# --- operator endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong"),
        pytest.param({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, id="token-with-suffix"),
        pytest.param({"Authorization": f"Basic {ADMIN_TOKEN}"}, id="wrong-scheme"),
    ],
)
async def test_operator_endpoint_rejects_a_missing_or_wrong_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post("/v1/admin/projects", json={"name": "nope"}, headers=headers)
    assert_problem(r, 401, "invalid_admin_token")
    assert_problem(
        await client.get("/v1/admin/projects", headers=headers), 401, "invalid_admin_token"
    )


async def test_operator_endpoint_rejects_a_project_admin_key(project: Project) -> None:
    r = await project.post("/v1/admin/projects", {"name": "nope"})
    assert_problem(r, 401, "invalid_admin_token")
