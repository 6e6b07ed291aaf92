"""Responses match the published contract: a walk of the whole API, validated by openapi-core.

The walk calls every operation of openapi/openapi.json for a success and for the errors a
client can reach (401, 402, 403, 404, 409, 422; 429 in its own test). Each step asserts the
status it expects, and every response is validated against the committed spec (see
``tests/platform/conformance.py``). The walk must cover every operationId of the spec, so a new
route without a walk step fails here.

Below it: the checker rejects hand-made responses that break the spec in each way it checks,
and spec and server agree on sample inputs where schemathesis found them disagreeing (a fuzzer
generates "valid" input from the spec, so what the spec admits the server must accept).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_schema_validator import OAS31Validator
from sqlalchemy import text

from app.core.http import render_json
from app.core.ids import uuid7
from app.core.settings import ApiSettings, Settings
from app.db.session import Database
from app.main import create_app
from tests.conftest import ADMIN_TOKEN, Project, assert_ledger_consistent, create_project
from tests.fakes.razorpay_server import FakeRazorpay
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import body
from tests.platform.conformance import (
    OPERATIONS,
    SPEC,
    Recorder,
    check_problem,
    check_response,
)

PAST = (datetime.now(UTC) - timedelta(days=1)).isoformat()
FUTURE = (datetime.now(UTC) + timedelta(days=30)).isoformat()
# Operations with no error a client can cause: probes and metrics take no input or credentials.
NO_REACHABLE_ERROR = {"service_healthz", "service_readyz", "service_metrics"}


class _ProjectKey:
    """Marker: authenticate with the walked project's admin key."""


PROJECT_KEY = _ProjectKey()


class Walk:
    """Sends one request, asserts the status the step expects, and validates the response."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.key = key
        self.recorder = Recorder()

    async def __call__(
        self,
        method: str,
        path: str,
        expect: int,
        payload: Any = None,
        *,
        key: str | _ProjectKey | None = PROJECT_KEY,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
    ) -> Any:
        sent = dict(headers or {})
        token = self.key if isinstance(key, _ProjectKey) else key
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if payload is not None:
            content = render_json(payload)  # exact decimals, as clients with a decimal type send
            sent.setdefault("Content-Type", "application/json")
        response = await self.client.request(
            method, path, content=content, headers=sent, params=params
        )
        assert response.status_code == expect, (method, path, response.text)
        self.recorder.record(response)
        self.last = response
        media = response.headers.get("content-type", "")
        is_json = media.startswith("application/") and media != "application/x-ndjson"
        return body(response) if is_json and response.content else None


@dataclass
class Keys:
    read: str
    usage: str


async def _walk_operator(w: Walk) -> None:
    op = ADMIN_TOKEN
    created = await w("POST", "/v1/admin/projects", 201, {"name": "walked"}, key=op)
    replay = {"Idempotency-Key": f"op-{uuid.uuid4()}"}
    first = await w("POST", "/v1/admin/projects", 201, {"name": "once"}, key=op, headers=replay)
    assert await w("POST", "/v1/admin/projects", 201, {"name": "once"}, key=op, headers=replay) == (
        first
    )
    assert w.last.headers["idempotent-replayed"] == "true"
    await w("POST", "/v1/admin/projects", 409, {"name": "twice"}, key=op, headers=replay)
    await w("POST", "/v1/admin/projects", 401, {"name": "x"}, key=None)
    await w("POST", "/v1/admin/projects", 401, {"name": "x"}, key="not-the-token")
    await w("POST", "/v1/admin/projects", 422, {"name": ""}, key=op)
    await w("GET", "/v1/admin/projects", 200, key=op, params={"limit": 1})
    await w("GET", "/v1/admin/projects", 401, key=None)
    await w("GET", "/v1/admin/projects", 422, key=op, params={"limit": 0})
    await w("GET", f"/v1/admin/projects/{created['id']}", 200, key=op)
    await w("GET", f"/v1/admin/projects/{uuid.uuid4()}", 404, key=op)
    await w("GET", "/v1/admin/projects/not-a-uuid", 404, key=op)
    await w("GET", f"/v1/admin/projects/{created['id']}", 401, key=None)


async def _walk_keys_and_project(w: Walk, project: Project) -> Keys:
    read = await w("POST", "/v1/api-keys", 201, {"name": "reader", "scopes": ["read"]})
    usage = await w(
        "POST", "/v1/api-keys", 201, {"name": "meter", "scopes": ["usage"], "expires_at": FUTURE}
    )
    doomed = await w("POST", "/v1/api-keys", 201, {"name": "doomed", "scopes": ["write", "read"]})
    await w("POST", "/v1/api-keys", 422, {"name": "none", "scopes": []})
    await w("POST", "/v1/api-keys", 422, {"name": "old", "scopes": ["read"], "expires_at": PAST})
    await w("POST", "/v1/api-keys", 403, {"name": "x", "scopes": ["read"]}, key=read["key"])
    await w("GET", "/v1/api-keys", 200, params={"limit": 2})
    await w("GET", "/v1/api-keys", 403, key=read["key"])
    await w("GET", "/v1/api-keys", 401, key="ck_unknown")
    await w("GET", "/v1/api-keys", 401, key=None)
    await w("DELETE", f"/v1/api-keys/{doomed['id']}", 204)
    await w("DELETE", f"/v1/api-keys/{uuid.uuid4()}", 404)
    await w("DELETE", "/v1/api-keys/not-a-uuid", 404)
    await w("DELETE", f"/v1/api-keys/{read['id']}", 403, key=read["key"])
    await w("GET", "/v1/project", 401, key=doomed["key"])  # revoked

    await w("GET", "/v1/project", 200, key=read["key"])
    await w("GET", "/v1/project", 200, headers={"X-Project-Id": project.id})
    await w("GET", "/v1/project", 403, headers={"X-Project-Id": str(uuid.uuid4())})
    await w("GET", "/v1/project", 401, key="ck_unknown")
    await w("PATCH", "/v1/project", 200, {"settings": {"low_balance_thresholds": ["2.5"]}})
    await w("PATCH", "/v1/project", 422, {"settings": {"default_hold_ttl_seconds": 0}})
    await w("PATCH", "/v1/project", 403, {"name": "renamed"}, key=read["key"])
    return Keys(read=read["key"], usage=usage["key"])


async def _walk_users_and_credits(w: Walk, keys: Keys) -> None:
    await w("POST", "/v1/users", 201, {"id": "alice", "metadata": {"plan": "free"}})
    await w("POST", "/v1/users", 201, {"id": "bob"})
    await w("POST", "/v1/users", 409, {"id": "alice"})
    await w("POST", "/v1/users", 422, {"id": "has space"})
    await w("POST", "/v1/users", 422, {"id": "x", "unknown": 1})
    await w("POST", "/v1/users", 403, {"id": "carol"}, key=keys.read)
    await w("POST", "/v1/users", 401, {"id": "carol"}, key=None)
    await w("GET", "/v1/users", 200, params={"limit": 1})
    await w("GET", "/v1/users", 422, params={"limit": 101})
    await w("GET", "/v1/users/alice", 200, key=keys.usage)
    await w("GET", "/v1/users/nobody", 404)
    await w("GET", "/v1/users/%2F", 404)  # the id "/": no route, and no redirect to the list
    await w("POST", "/v1/users/a%2Fb/credits", 404, {"amount": 1})
    await w("PATCH", "/v1/users/alice", 200, {"metadata": {"plan": None, "team": "core"}})
    await w("PATCH", "/v1/users/nobody", 404, {"metadata": {}})
    await w("PATCH", "/v1/users/alice", 403, {"metadata": {}}, key=keys.read)
    await w("POST", "/v1/users", 201, {"id": "carol"})
    await w("DELETE", "/v1/users/carol", 204)
    await w("DELETE", "/v1/users/carol", 404)
    await w("DELETE", "/v1/users/bob", 403, key=keys.usage)

    await w("POST", "/v1/users/alice/credits", 201, {"amount": "100", "reason": "welcome"})
    await w(
        "POST",
        "/v1/users/alice/credits",
        201,
        {"amount": Decimal("5.000001"), "expires_at": FUTURE, "source": "bonus"},
    )
    await w("POST", "/v1/users/bob/credits", 201, {"amount": 10})
    await w("POST", "/v1/users/alice/credits", 422, {"amount": 0})
    await w("POST", "/v1/users/alice/credits", 422, {"amount": "0.0000001"})
    await w("POST", "/v1/users/alice/credits", 422, {"amount": 1, "expires_at": PAST})
    await w("POST", "/v1/users/nobody/credits", 404, {"amount": 1})
    await w("POST", "/v1/users/alice/credits", 403, {"amount": 1}, key=keys.usage)
    await w("POST", "/v1/users/alice/debits", 201, {"amount": "0.5", "reason": "correction"})
    await w("POST", "/v1/users/alice/debits", 402, {"amount": 1_000_000})
    await w("POST", "/v1/users/nobody/debits", 404, {"amount": 1})
    await w("POST", "/v1/users/alice/debits", 422, {"amount": -1})
    grants = await w("GET", "/v1/users/alice/grants", 200, params={"limit": 1})
    assert grants["has_more"]
    await w("GET", "/v1/users/alice/grants", 200, params={"starting_after": grants["next_cursor"]})
    await w("GET", "/v1/users/alice/grants", 422, params={"starting_after": "not-a-uuid"})
    await w("GET", "/v1/users/nobody/grants", 404)
    ledger = await w("GET", "/v1/users/alice/ledger", 200, params={"limit": 1})
    await w("GET", "/v1/users/alice/ledger", 200, params={"starting_after": ledger["next_cursor"]})
    await w("GET", "/v1/users/alice/ledger", 422, params={"starting_after": "x"})
    await w("GET", "/v1/users/nobody/ledger", 404)
    await w("GET", "/v1/users/alice/ledger", 401, key=None)


async def _walk_models(w: Walk, keys: Keys) -> None:
    start = {"user_id": "alice", "model": "gpt-4o"}
    await w("POST", "/v1/transactions/start", 422, start)  # no price yet: unknown_model
    await w("GET", "/v1/models/_default", 404)
    default = {"input_price_per_1k": "0.5", "output_price_per_1k": Decimal("1.5")}
    await w("PUT", "/v1/models/_default", 200, default)
    prices = {
        "input_price_per_1k": 1,
        "output_price_per_1k": 2,
        "cached_input_price_per_1k": "0.25",
        "request_price": "0.01",
    }
    await w("PUT", "/v1/models/gpt-4o", 200, prices)
    await w("PUT", "/v1/models/doomed", 200, default)
    await w("PUT", "/v1/models/bad", 422, {"input_price_per_1k": -1, "output_price_per_1k": 0})
    await w("PUT", "/v1/models/bad", 403, default, key=keys.read)
    await w("GET", "/v1/models", 200, params={"limit": 1})
    await w("GET", "/v1/models", 422, params={"limit": 0})
    await w("GET", "/v1/models/gpt-4o", 200, key=keys.read)
    await w("GET", "/v1/models/gpt-4o", 403, key=keys.usage)
    await w("DELETE", "/v1/models/doomed", 204)
    await w("DELETE", "/v1/models/doomed", 404)


async def _walk_pricing_and_jobs(w: Walk, keys: Keys) -> None:
    expression = {"expression": "input_tokens * 0.01 + search_queries * 0.5"}
    await w("PUT", "/v1/models/search-model", 200, expression)
    await w("PUT", "/v1/models/bad", 422, {"expression": "input_tokens.__class__"})
    tokens = {"input_tokens": 10, "search_queries": 1}
    await w("POST", "/v1/pricing/evaluate", 200, {"model": "search-model", "tokens": tokens})
    await w("POST", "/v1/pricing/evaluate", 200, {"model": "gpt-4o", "tokens": tokens},
            key=keys.usage)  # fmt: skip
    await w("POST", "/v1/pricing/evaluate", 422, {"model": "search-model"})
    await w("PUT", "/v1/jobs/batch_job", 200, {"price": 20})
    await w("PUT", "/v1/jobs/doomed", 200, {"price": "0.5"})
    await w("PUT", "/v1/jobs/bad", 422, {"price": -1})
    await w("PUT", "/v1/jobs/bad", 403, {"price": 1}, key=keys.read)
    await w("GET", "/v1/jobs", 200, params={"limit": 1})
    await w("GET", "/v1/jobs", 200, key=keys.read)
    await w("GET", "/v1/jobs", 422, params={"limit": 0})
    await w("GET", "/v1/jobs/batch_job", 200, key=keys.read)
    await w("GET", "/v1/jobs/nope", 404)
    await w("DELETE", "/v1/jobs/doomed", 204)
    await w("DELETE", "/v1/jobs/doomed", 404)


async def _walk_transactions(w: Walk, keys: Keys) -> None:
    start = {
        "user_id": "alice",
        "model": "gpt-4o",
        "provisional_tokens": {"input_tokens": 100, "output_tokens": 500},
        "feature_identifier": "chat",
        "metadata": {"request": "r1"},
        "hold_ttl_seconds": 600,
    }
    idem = {"Idempotency-Key": f"start-{uuid.uuid4()}"}
    txn = await w("POST", "/v1/transactions/start", 201, start, key=keys.usage, headers=idem)
    assert txn["continue"] is True
    tid = txn["transaction_id"]
    await w("POST", "/v1/transactions/start", 201, start, key=keys.usage, headers=idem)
    assert w.last.headers["idempotent-replayed"] == "true"
    other = {**start, "user_id": "bob"}
    await w("POST", "/v1/transactions/start", 409, other, key=keys.usage, headers=idem)
    bad_key = {"Idempotency-Key": "k" * 256}
    await w("POST", "/v1/transactions/start", 422, start, key=keys.usage, headers=bad_key)
    await w("POST", "/v1/transactions/start", 422, {**start, "hold_ttl_seconds": 0})
    await w("POST", "/v1/transactions/start", 403, start, key=keys.read)
    await w("DELETE", "/v1/users/alice", 409)  # an open transaction

    await w("POST", f"/v1/transactions/{tid}/extend", 200, {"hold_ttl_seconds": 1200})
    await w("POST", f"/v1/transactions/{tid}/extend", 422, {"hold_ttl_seconds": 0})
    await w("POST", f"/v1/transactions/{uuid.uuid4()}/extend", 404, {"hold_ttl_seconds": 60})
    await w("POST", f"/v1/transactions/{tid}/refund", 409, {})  # not completed yet
    done = {"success": True, "finalized_tokens": {"input_tokens": 80, "output_tokens": 400}}
    await w("POST", f"/v1/transactions/{tid}/complete", 200, done, key=keys.usage)
    await w("POST", f"/v1/transactions/{tid}/complete", 200, done, key=keys.usage)  # replayed
    await w("POST", f"/v1/transactions/{tid}/complete", 409, {"success": False})
    await w("POST", f"/v1/transactions/{tid}/complete", 422, {"success": "yes"})
    await w("POST", f"/v1/transactions/{uuid.uuid4()}/complete", 404, {"success": True})
    await w("POST", "/v1/transactions/not-a-uuid/complete", 404, {"success": True})
    await w("POST", f"/v1/transactions/{tid}/extend", 409, {"hold_ttl_seconds": 60})
    await w("POST", f"/v1/transactions/{tid}/refund", 201, {"amount": "0.1", "reason": "sorry"})
    await w("POST", f"/v1/transactions/{tid}/refund", 409, {"amount": 1000})
    await w("POST", f"/v1/transactions/{tid}/refund", 403, {}, key=keys.usage)
    await w("POST", f"/v1/transactions/{tid}/refund", 422, {"amount": 0})
    await w("POST", f"/v1/transactions/{uuid.uuid4()}/refund", 404, {})

    failed = await w("POST", "/v1/transactions/start", 201, {**start, "user_id": "bob"})
    fid = failed["transaction_id"]
    await w("POST", f"/v1/transactions/{fid}/complete", 200, {"success": False})
    poor = {**start, "user_id": "poor", "provisional_tokens": {"output_tokens": 10**6}}
    denied = await w("POST", "/v1/transactions/start", 201, poor)
    assert denied["continue"] is False
    assert denied["reason"] == "insufficient_credits"
    await w("POST", f"/v1/transactions/{denied['transaction_id']}/complete", 409, done)

    filters = {
        "user_id": "alice",
        "status": "completed",
        "model": "gpt-4o",
        "feature_identifier": "chat",
        "created_after": PAST,
        "created_before": FUTURE,
    }
    listed = await w("GET", "/v1/transactions", 200, params=filters)
    assert [t["id"] for t in listed["data"]] == [tid]
    await w("GET", "/v1/transactions", 200, params={"limit": 1})
    await w("GET", "/v1/transactions", 422, params={"status": "bogus"})
    await w("GET", "/v1/transactions", 403, key=keys.usage)
    await w("GET", f"/v1/transactions/{tid}", 200)
    await w("GET", f"/v1/transactions/{uuid.uuid4()}", 404)
    await w("GET", "/v1/transactions/not-a-uuid", 404)

    usage = {
        "user_id": "alice",
        "model": "gpt-4o",
        "tokens": {"input_tokens": 10, "output_tokens": 20, "cached_input_tokens": 5},
        "feature_identifier": "chat",
        "metadata": {"n": 1},
    }
    await w("POST", "/v1/usage", 201, usage, key=keys.usage)
    await w("POST", "/v1/usage", 422, {**usage, "tokens": {"input_tokens": -1}})
    await w("POST", "/v1/usage", 403, usage, key=keys.read)
    job = {"user_id": usage["user_id"], "job": "batch_job", "quantity": 2}
    await w("POST", "/v1/usage", 201, job, key=keys.usage)
    await w("POST", "/v1/usage", 422, {**job, "job": "no_such_job"})  # unknown_job
    check = {"user_id": "alice", "model": "gpt-4o", "provisional_tokens": {"input_tokens": 10}}
    await w("POST", "/v1/check", 200, check, key=keys.usage)
    await w("POST", "/v1/check", 200, {"user_id": "alice", "amount": "1000000"})
    await w("POST", "/v1/check", 422, {"user_id": "alice", "amount": -1})
    await w("POST", "/v1/check", 403, check, key=keys.read)

    # With auto-creation off, usage for an unknown user is 404 user_not_found.
    await w("PATCH", "/v1/project", 200, {"settings": {"auto_create_users": False}})
    await w("POST", "/v1/transactions/start", 404, {**start, "user_id": "ghost"})
    await w("POST", "/v1/usage", 404, {**usage, "user_id": "ghost"})
    await w("POST", "/v1/check", 404, {**check, "user_id": "ghost"})
    await w("PATCH", "/v1/project", 200, {"settings": {"auto_create_users": True}})


async def _walk_teams(w: Walk, keys: Keys) -> None:
    await w("POST", "/v1/teams", 201, {"id": "acme", "name": "Acme", "metadata": {"a": 1}})
    await w("POST", "/v1/teams", 409, {"id": "acme"})
    await w("POST", "/v1/teams", 422, {"id": "has space"})
    await w("POST", "/v1/teams", 403, {"id": "other"}, key=keys.read)
    await w("GET", "/v1/teams", 200, params={"limit": 1}, key=keys.read)
    await w("GET", "/v1/teams", 422, params={"limit": 0})
    await w("GET", "/v1/teams/acme", 200)
    await w("GET", "/v1/teams/nope", 404)
    await w("PATCH", "/v1/teams/acme", 200, {"name": "Acme Inc", "metadata": {"a": None}})
    await w("PATCH", "/v1/teams/nope", 404, {"name": "x"})
    member = {"role": "owner", "spend_caps": [{"period": "day", "limit": "500"}]}
    await w("PUT", "/v1/teams/acme/members/alice", 200, member)
    await w("PUT", "/v1/teams/acme/members/bob", 200, {})
    await w("PUT", "/v1/teams/acme/members/nobody", 404, {})
    await w("PUT", "/v1/teams/nope/members/alice", 404, {})
    await w("PUT", "/v1/teams/acme/members/alice", 422, {"role": "boss"})
    members = await w("GET", "/v1/teams/acme/members", 200, params={"limit": 1})
    assert members["has_more"]
    await w("GET", "/v1/teams/nope/members", 404)
    await w("POST", "/v1/teams/acme/credits", 201, {"amount": "50", "reason": "pool"})
    await w("POST", "/v1/teams/nope/credits", 404, {"amount": 1})
    await w("POST", "/v1/teams/acme/credits", 422, {"amount": 1, "expires_at": PAST})
    await w("POST", "/v1/teams/acme/debits", 201, {"amount": "0.5"})
    await w("POST", "/v1/teams/acme/debits", 402, {"amount": 1_000_000})
    await w("POST", "/v1/teams/nope/debits", 404, {"amount": 1})
    start = {"user_id": "alice", "team_id": "acme", "model": "gpt-4o",
             "provisional_tokens": {"input_tokens": 100}}  # fmt: skip
    txn = await w("POST", "/v1/transactions/start", 201, start, key=keys.usage)
    await w("POST", f"/v1/transactions/{txn['transaction_id']}/complete", 200, {"success": True})
    await w("POST", "/v1/transactions/start", 404, {**start, "team_id": "nope"}, key=keys.usage)
    await w("POST", "/v1/transactions/start", 403, {**start, "user_id": "carol"}, key=keys.usage)
    usage = {"user_id": "bob", "team_id": "acme", "model": "gpt-4o",
             "tokens": {"input_tokens": 10}}  # fmt: skip
    await w("POST", "/v1/usage", 201, usage, key=keys.usage)
    await w("POST", "/v1/check", 200, {"user_id": "bob", "team_id": "acme", "amount": 1})
    await w("GET", "/v1/teams/acme/grants", 200)
    await w("GET", "/v1/teams/nope/grants", 404)
    await w("GET", "/v1/teams/acme/ledger", 200, params={"limit": 2})
    await w("GET", "/v1/teams/nope/ledger", 404)
    await w("GET", "/v1/analytics/spend", 200, params={"group_by": "member", "team_id": "acme"})
    await w("DELETE", "/v1/teams/acme/members/bob", 204)
    await w("DELETE", "/v1/teams/acme/members/bob", 404)
    await w("POST", "/v1/teams", 201, {"id": "gone"})
    await w("DELETE", "/v1/teams/gone", 204)
    await w("DELETE", "/v1/teams/gone", 404)
    await w("DELETE", "/v1/teams/acme", 403, key=keys.usage)


async def _walk_tiers_and_plans(w: Walk, keys: Keys) -> None:
    pro = {
        "id": "pro",
        "name": "Pro",
        "credits": 50,
        "refill_interval": "month",
        "refill_mode": "rollover",
        "rollover_cap": 100,
        "allow_overage": True,
        "overage_limit": "10",
        "price_multiplier": "0.9",
        "model_overrides": {"gpt-4o": {"input_price_per_1k": "0.5"}},
        "max_concurrent_transactions": 5,
        "features": {"beta": True},
    }
    await w("POST", "/v1/tiers", 201, pro)
    await w("POST", "/v1/tiers", 201, {"id": "temp", "name": "Temp"})
    await w("POST", "/v1/tiers", 409, {"id": "pro", "name": "Again"})
    await w("POST", "/v1/tiers", 422, {"id": "bad id", "name": "x"})
    await w("POST", "/v1/tiers", 403, {"id": "t", "name": "x"}, key=keys.read)
    await w("GET", "/v1/tiers", 200, params={"limit": 1})
    await w("GET", "/v1/tiers", 422, params={"limit": "many"})
    await w("GET", "/v1/tiers/pro", 200, key=keys.read)
    await w("GET", "/v1/tiers/missing", 404)
    await w("PATCH", "/v1/tiers/pro", 200, {"features": {"beta": False}})
    await w("PATCH", "/v1/tiers/missing", 404, {"name": "x"})
    await w("PATCH", "/v1/tiers/pro", 422, {"credits": -1})
    await w("POST", "/v1/users/alice/tier", 200, {"tier_id": "pro"})
    await w("POST", "/v1/users/alice/tier", 404, {"tier_id": "missing"})
    await w("POST", "/v1/users/nobody/tier", 404, {"tier_id": "pro"})
    await w("POST", "/v1/users/alice/tier", 422, {"tier_id": "pro", "reset_balance": "maybe"})
    await w("DELETE", "/v1/tiers/pro", 409)  # alice is on it
    await w("DELETE", "/v1/tiers/temp", 204)
    await w("DELETE", "/v1/tiers/temp", 404)

    plan = {
        "id": "pro_monthly",
        "name": "Pro monthly",
        "price": {"amount": "9.99", "currency": "USD"},
        "interval": "month",
        "credits_per_period": 1000,
        "tier_id": "pro",
    }
    await w("POST", "/v1/plans", 201, plan)
    await w("POST", "/v1/plans", 201, {**plan, "id": "temp_plan", "tier_id": None})
    await w("POST", "/v1/plans", 409, plan)
    await w("POST", "/v1/plans", 404, {**plan, "id": "p2", "tier_id": "missing"})
    await w("POST", "/v1/plans", 422, {**plan, "price": {"amount": 1, "currency": "usd"}})
    await w("GET", "/v1/plans", 200, params={"limit": 1})
    await w("GET", "/v1/plans", 403, key=keys.usage)
    await w("GET", "/v1/plans/pro_monthly", 200)
    await w("GET", "/v1/plans/missing", 404)
    await w("PATCH", "/v1/plans/pro_monthly", 200, {"name": "Pro", "active": True})
    await w("PATCH", "/v1/plans/missing", 404, {"name": "x"})
    await w("PATCH", "/v1/plans/pro_monthly", 422, {"interval": "year"})

    subscribe = {"plan_id": "pro_monthly", "provider": "manual"}
    created = await w("POST", "/v1/users/bob/subscriptions", 201, subscribe)
    sid = created["subscription"]["id"]
    await w("POST", "/v1/users/bob/subscriptions", 409, subscribe)  # subscription_exists
    await w("POST", "/v1/users/alice/subscriptions", 409, {**subscribe, "provider": "stripe"})
    await w("POST", "/v1/users/alice/subscriptions", 404, {**subscribe, "plan_id": "missing"})
    await w("POST", "/v1/users/alice/subscriptions", 422, {**subscribe, "provider": "paypal"})
    await w("GET", "/v1/users/bob/subscriptions", 200)
    await w("GET", "/v1/users/nobody/subscriptions", 404)
    await w("GET", "/v1/users/bob/subscriptions", 422, params={"starting_after": "x"})
    await w("GET", f"/v1/subscriptions/{sid}", 200)
    await w("GET", f"/v1/subscriptions/{uuid.uuid4()}", 404)
    await w("DELETE", "/v1/plans/pro_monthly", 409)  # bob subscribes to it
    await w("POST", f"/v1/subscriptions/{sid}/cancel", 200)  # no body: at period end
    await w("POST", f"/v1/subscriptions/{sid}/cancel", 200, {"at_period_end": False})
    await w("POST", f"/v1/subscriptions/{uuid.uuid4()}/cancel", 404, {})
    await w("POST", f"/v1/subscriptions/{sid}/cancel", 422, {"at_period_end": "later"})
    await w("DELETE", "/v1/plans/temp_plan", 204)
    await w("DELETE", "/v1/plans/temp_plan", 404)


async def _walk_promos_and_caps(w: Walk, keys: Keys) -> None:
    promo = {
        "code": "SAVE10",
        "credits": 10,
        "description": "Ten free credits",
        "max_redemptions": 5,
        "max_per_user": 1,
        "starts_at": PAST,
        "expires_at": FUTURE,
        "credit_expires_in_days": 30,
    }
    await w("POST", "/v1/promos", 201, promo)
    await w("POST", "/v1/promos", 201, {"code": "temp", "credits": "0.5"})
    await w("POST", "/v1/promos", 409, promo)
    await w("POST", "/v1/promos", 422, {**promo, "code": "zero", "credits": 0})
    await w("GET", "/v1/promos", 200, params={"limit": 1})
    await w("GET", "/v1/promos", 401, key=None)
    await w("GET", "/v1/promos/save10", 200)
    await w("GET", "/v1/promos/missing", 404)
    await w("PATCH", "/v1/promos/SAVE10", 200, {"max_redemptions": 10, "description": None})
    await w("PATCH", "/v1/promos/missing", 404, {"active": False})
    await w("PATCH", "/v1/promos/save10", 422, {"credits": 20})
    await w("GET", "/v1/promos/save10/eligibility", 200, params={"user_id": "alice"})
    await w("GET", "/v1/promos/missing/eligibility", 200, params={"user_id": "alice"})
    await w("GET", "/v1/promos/save10/eligibility", 422)  # user_id is required
    await w("POST", "/v1/promos/save10/claim", 201, {"user_id": "alice"})
    await w("POST", "/v1/promos/save10/claim", 201, {"user_id": "bob"})
    await w("POST", "/v1/promos/save10/claim", 409, {"user_id": "alice"})  # already_claimed
    await w("POST", "/v1/promos/missing/claim", 404, {"user_id": "alice"})
    await w("POST", "/v1/promos/save10/claim", 422, {"user_id": ""})
    await w("PATCH", "/v1/promos/save10", 409, {"max_redemptions": 1})  # 2 redemptions
    await w("GET", "/v1/promos/save10/redemptions", 200, params={"limit": 1})
    await w("GET", "/v1/promos/missing/redemptions", 404)
    await w("DELETE", "/v1/promos/temp", 204)
    await w("DELETE", "/v1/promos/temp", 404)
    await w("DELETE", "/v1/promos/save10", 403, key=keys.read)

    await w("PUT", "/v1/users/alice/spend-caps/day", 200, {"limit": 50, "action": "deny"})
    monthly = {"limit": "5.5", "action": "warn", "model": "gpt-4o"}
    await w("PUT", "/v1/users/alice/spend-caps/month", 200, monthly)
    await w("PUT", "/v1/users/nobody/spend-caps/day", 404, {"limit": 1, "action": "deny"})
    await w("PUT", "/v1/users/alice/spend-caps/day", 422, {"limit": 0, "action": "deny"})
    await w("PUT", "/v1/users/alice/spend-caps/week", 422, {"limit": 1, "action": "deny"})
    await w("GET", "/v1/users/alice/spend-caps", 200)
    await w("GET", "/v1/users/nobody/spend-caps", 404)
    await w("DELETE", "/v1/users/alice/spend-caps/day", 204)
    await w("DELETE", "/v1/users/alice/spend-caps/day", 404)  # spend_cap_not_found
    await w("DELETE", "/v1/users/alice/spend-caps/month", 204, params={"model": "gpt-4o"})
    await w("DELETE", "/v1/users/nobody/spend-caps/day", 404)


async def _walk_payments(
    w: Walk, keys: Keys, project: Project, stripe: FakeStripe, razorpay: FakeRazorpay
) -> None:
    """Provider accounts, top-ups and both webhook receivers, through the official SDKs and
    the fake providers (tests/fakes/)."""
    top_up = {
        "user_id": "payer",
        "provider": "stripe",
        "amount": "10.00",
        "currency": "USD",
        "credits": 1000,
        "success_url": "https://example.com/ok",
        "cancel_url": "https://example.com/cancel",
    }
    await w("POST", "/v1/payments", 409, top_up)  # provider_not_configured
    stripe_account = {"secret_key": stripe.secret_key, "webhook_secret": stripe.webhook_secret}
    await w("PUT", "/v1/providers/stripe", 200, stripe_account)
    await w("PUT", "/v1/providers/stripe", 422, {**stripe_account, "secret_key": "nope"})
    await w("PUT", "/v1/providers/stripe", 403, stripe_account, key=keys.read)
    await w(
        "PUT",
        "/v1/providers/razorpay",
        200,
        {
            "key_id": razorpay.key_id,
            "key_secret": razorpay.key_secret,
            "webhook_secret": razorpay.webhook_secret,
        },
    )
    await w("PUT", "/v1/providers/razorpay", 422, {"key_id": "rzp_test_x"})
    await w("GET", "/v1/providers", 200)
    await w("GET", "/v1/providers", 403, key=keys.usage)

    payment = await w("POST", "/v1/payments", 201, top_up)
    await w("POST", "/v1/payments", 422, {**top_up, "amount": "10.001"})
    await w("POST", "/v1/payments", 422, {**top_up, "currency": "ZZZ"})
    await w("POST", "/v1/payments", 403, top_up, key=keys.read)
    await w("GET", "/v1/payments", 200, params={"user_id": "payer", "limit": 1})
    await w("GET", "/v1/payments", 422, params={"status": "paid"})
    await w("GET", f"/v1/payments/{payment['id']}", 200, key=keys.read)
    await w("GET", f"/v1/payments/{uuid.uuid4()}", 404)

    stripe_hook = f"/v1/webhooks/stripe/{project.id}"
    (event,) = stripe.pay(payment["provider_reference"])
    raw, signed = stripe.sign(event)
    await w("POST", stripe_hook, 200, key=None, headers=signed, content=raw)
    forged = {**signed, "stripe-signature": signed["stripe-signature"][:-4] + "0000"}
    await w("POST", stripe_hook, 400, key=None, headers=forged, content=raw)

    razorpay_payment = await w(
        "POST", "/v1/payments", 201, {**top_up, "provider": "razorpay", "currency": "INR"}
    )
    razorpay_hook = f"/v1/webhooks/razorpay/{project.id}"
    for delivery in razorpay.pay(razorpay_payment["provider_reference"]):
        await w(
            "POST", razorpay_hook, 200, key=None, headers=delivery.headers, content=delivery.body
        )
    await w("POST", razorpay_hook, 400, key=None, headers={}, content=b"{}")
    paid = await w("GET", "/v1/users/payer", 200)
    assert paid["balance"]["total"] == 2000, paid

    await w("GET", "/v1/analytics/liability", 200, key=keys.read)
    await w("GET", "/v1/analytics/liability", 403, key=keys.usage)
    await w("DELETE", "/v1/providers/razorpay", 204)
    await w("DELETE", "/v1/providers/razorpay", 404)


async def _walk_reads(w: Walk, keys: Keys) -> None:
    for group_by in ("user", "model", "feature", "day"):
        await w("GET", "/v1/analytics/spend", 200, params={"group_by": group_by, "limit": 5})
    window = {"start": "2024-03-02T00:00:00Z", "end": "2024-03-01T00:00:00Z"}
    await w("GET", "/v1/analytics/spend", 422, params={"group_by": "user", **window})
    await w("GET", "/v1/analytics/spend", 422)  # group_by is required
    await w("GET", "/v1/analytics/spend", 403, params={"group_by": "user"}, key=keys.usage)
    await w("GET", "/v1/analytics/summary", 200, key=keys.read)
    too_long = {"start": "2020-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}
    await w("GET", "/v1/analytics/summary", 422, params=too_long)

    events = await w("GET", "/v1/events", 200, params={"limit": 100})
    assert events["data"], "the walk wrote events"
    await w("GET", "/v1/events", 200, params={"type": "credits.granted", "created_after": PAST})
    await w("GET", "/v1/events", 422, params={"starting_after": "not-a-uuid"})
    await w("GET", f"/v1/events/{events['data'][0]['id']}", 200)
    await w("GET", f"/v1/events/{uuid.uuid4()}", 404)

    await w("GET", "/v1/ledger/export", 200, key=keys.read)
    first = json.loads(w.last.content.splitlines()[0])
    resume = {"since": PAST, "after": first["id"], "prev_hash": first["hash"], "until": FUTURE}
    await w("GET", "/v1/ledger/export", 200, params=resume)
    await w("GET", "/v1/ledger/export", 422, params={"since": FUTURE, "until": PAST})
    await w("GET", "/v1/ledger/export", 404, params={"after": 2**62})
    await w("GET", "/v1/ledger/export", 401, key=None)

    await w("GET", "/healthz", 200, key=None)
    await w("GET", "/readyz", 200, key=None)
    await w("GET", "/metrics", 200, key=None)


async def _walk_webhook_endpoints(w: Walk, keys: Keys, db: Database) -> None:
    base = "/v1/webhook-endpoints"
    missing = uuid.uuid4()
    hook = {
        "url": "https://hooks.invalid/walk",
        "events": ["credits.*", "webhook.test"],
        "description": "walk",
        "metadata": {"k": 1},
    }
    created = await w("POST", base, 201, hook)
    eid = created["id"]
    off = await w("POST", base, 201, {"url": "https://hooks.invalid/off", "enabled": False})
    await w("POST", base, 422, {**hook, "url": "http://hooks.invalid/walk"})
    await w("POST", base, 422, {**hook, "events": ["nope"]})
    await w("POST", base, 403, hook, key=keys.read)
    await w("GET", base, 200, params={"limit": 1})
    await w("GET", base, 403, key=keys.read)
    await w("GET", f"{base}/{eid}", 200)
    await w("GET", f"{base}/{missing}", 404)
    await w("PATCH", f"{base}/{eid}", 200, {"description": None, "metadata": {"k": None}})
    await w("PATCH", f"{base}/{eid}", 422, {"url": "https://127.0.0.1/x"})
    await w("PATCH", f"{base}/{missing}", 404, {"enabled": True})
    rotated = await w("POST", f"{base}/{eid}/rotate-secret", 200)
    assert rotated["previous_secret_expires_at"] is not None
    await w("POST", f"{base}/{eid}/rotate-secret", 200, {"grace_seconds": 0})
    await w("POST", f"{base}/{eid}/rotate-secret", 422, {"grace_seconds": -1})
    await w("POST", f"{base}/{missing}/rotate-secret", 404)
    test = await w("POST", f"{base}/{eid}/test", 202)
    await w("POST", f"{base}/{off['id']}/test", 409)
    await w("POST", f"{base}/{missing}/test", 404)
    async with db.transaction() as session:  # an attempt, as the dispatcher records one
        await session.execute(
            text(
                "INSERT INTO webhook_attempts (id, project_id, delivery_id, endpoint_id,"
                " event_id, attempt, status_code, latency_ms, response_excerpt, error,"
                " succeeded, next_attempt_at) SELECT :id, project_id, id, endpoint_id, event_id,"
                " 1, NULL, 15000, NULL, 'ReadTimeout', false, now() + interval '5 seconds'"
                " FROM webhook_deliveries WHERE event_id = :e"
            ),
            {"id": uuid7(), "e": test["id"]},
        )
    attempts = await w("GET", f"{base}/{eid}/deliveries", 200, params={"event_id": test["id"]})
    assert [a["error"] for a in attempts["data"]] == ["ReadTimeout"]
    await w("GET", f"{base}/{eid}/deliveries", 422, params={"starting_after": "x"})
    await w("GET", f"{base}/{missing}/deliveries", 404)

    granted = await w("GET", "/v1/events", 200, params={"type": "credits.granted", "limit": 1})
    event = granted["data"][0]["id"]
    redelivered = await w("POST", f"/v1/events/{event}/redeliver", 202)
    assert [d["endpoint_id"] for d in redelivered["deliveries"]] == [eid]
    await w("POST", f"/v1/events/{event}/redeliver", 202, {"endpoint_id": eid})
    await w("POST", f"/v1/events/{event}/redeliver", 409, {"endpoint_id": off["id"]})
    await w("POST", f"/v1/events/{event}/redeliver", 404, {"endpoint_id": str(missing)})
    await w("POST", f"/v1/events/{event}/redeliver", 422, {"endpoint_id": "x"})
    await w("POST", f"/v1/events/{event}/redeliver", 403, key=keys.read)
    await w("POST", f"/v1/events/{missing}/redeliver", 404)
    assert (await w("GET", f"/v1/events/{event}", 200))["delivery_status"] == "pending"
    # Deleted: no dispatcher later in the suite finds these deliveries.
    await w("DELETE", f"{base}/{off['id']}", 204)
    await w("DELETE", f"{base}/{eid}", 204)
    await w("DELETE", f"{base}/{eid}", 404)
    await w("DELETE", f"{base}/{eid}", 403, key=keys.read)


async def test_every_response_of_a_walk_of_the_api_matches_the_spec(
    project: Project, db: Database, fake_stripe: FakeStripe, fake_razorpay: FakeRazorpay
) -> None:
    w = Walk(project.client, project.key)
    await _walk_operator(w)
    keys = await _walk_keys_and_project(w, project)
    await _walk_users_and_credits(w, keys)
    await _walk_models(w, keys)
    await _walk_pricing_and_jobs(w, keys)
    await _walk_transactions(w, keys)
    await _walk_teams(w, keys)
    await _walk_tiers_and_plans(w, keys)
    await _walk_promos_and_caps(w, keys)
    await _walk_payments(w, keys, project, fake_stripe, fake_razorpay)
    await _walk_reads(w, keys)
    await _walk_webhook_endpoints(w, keys, db)

    seen = w.recorder.seen
    assert set(seen) == set(OPERATIONS), {
        "not walked": sorted(set(OPERATIONS) - set(seen)),
        "not in the spec": sorted(set(seen) - set(OPERATIONS)),
    }
    no_success = sorted(op for op, codes in seen.items() if not any(c < 300 for c in codes))
    no_error = sorted(
        op for op, codes in seen.items() if op not in NO_REACHABLE_ERROR and max(codes) < 400
    )
    assert no_success == [], "operations the walk never saw succeed"
    assert no_error == [], "operations the walk never saw fail"
    statuses = set().union(*seen.values())
    assert {200, 201, 204, 401, 402, 403, 404, 409, 422} <= statuses
    await assert_ledger_consistent(db)


@pytest.fixture
async def throttled_app(settings: Settings) -> Any:
    """The app with a rate limit of one request per key (and a slow refill)."""
    api = ApiSettings(rate_limit_per_second=Decimal("0.001"), rate_limit_burst=1)
    application = create_app(settings.model_copy(update={"api": api}))
    async with application.router.lifespan_context(application):
        yield application


async def test_a_rate_limited_response_matches_the_spec(
    client: httpx.AsyncClient, throttled_app: FastAPI
) -> None:
    project = await create_project(client)
    transport = httpx.ASGITransport(app=throttled_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as throttled:
        first = await throttled.get("/v1/users", headers=project.headers)
        assert first.status_code == 200
        limited = await throttled.get("/v1/users", headers=project.headers)
    assert limited.status_code == 429
    assert check_response(limited) == "users_list"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-remaining"] == "0"


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("GET", "/v1/no-such-thing", 404, "not_found", None),
        ("PUT", "/v1/users", 405, "method_not_allowed", "GET, POST"),
        ("OPTIONS", "/v1/plans/p", 405, "method_not_allowed", "DELETE, GET, PATCH"),
        # GET /v1/transactions/{transaction_id} serves this path too.
        ("DELETE", "/v1/transactions/start", 405, "method_not_allowed", "GET, POST"),
    ],
)
async def test_requests_outside_every_operation_get_a_problem(
    project: Project, method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    r = await project.request(method, path)
    assert r.status_code == status
    assert check_problem(r)["code"] == code
    if status == 405:  # every method of the path, not only those of the first route
        assert r.headers["allow"] == allow


USER = (
    b'{"id":"u","tier_id":null,"features":{},"metadata":{"a":1},'
    b'"created_at":"2024-01-01T00:00:00Z","balance":{"available":1.5,"held":0,"total":1.5}}'
)
NOT_FOUND = (
    b'{"type":"/errors/user_not_found","code":"user_not_found","title":"No such user",'
    b'"status":404,"detail":"No such user","instance":"/v1/users/u","request_id":"r1"}'
)


def _response(status: int, content: bytes, content_type: str) -> httpx.Response:
    request = httpx.Request("GET", "http://test/v1/users/u")
    headers = {"content-type": content_type, "x-request-id": "r1"}
    return httpx.Response(status, content=content, headers=headers, request=request)


def test_the_checker_accepts_conforming_responses() -> None:
    assert check_response(_response(200, USER, "application/json")) == "users_get"
    assert check_response(_response(404, NOT_FOUND, "application/problem+json")) == "users_get"


@pytest.mark.parametrize(
    ("status", "content", "content_type"),
    [
        (418, USER, "application/json"),
        (200, USER, "text/html"),
        (200, USER.replace(b',"tier_id":null', b""), "application/json"),
        (200, USER.replace(b'{"id"', b'{"secret":1,"id"'), "application/json"),
        (200, USER.replace(b'"held":0', b'"held":"0"'), "application/json"),
        (200, USER.replace(b'"held":0', b'"held":0.0000001'), "application/json"),
        (200, USER.replace(b'"2024-01-01T00:00:00Z"', b'"yesterday"'), "application/json"),
        (404, NOT_FOUND, "application/json"),
        (404, NOT_FOUND.replace(b"user_not_found", b"tier_not_found"), "application/problem+json"),
        (404, NOT_FOUND.replace(b'"status":404', b'"status":400'), "application/problem+json"),
        (404, NOT_FOUND.replace(b'"/v1/users/u"', b'"/v1/x"'), "application/problem+json"),
        (404, NOT_FOUND.replace(b'"r1"', b'"r2"'), "application/problem+json"),
        (404, NOT_FOUND.replace(b',"detail":"No such user"', b""), "application/problem+json"),
    ],
    ids=[
        "undocumented-status",
        "undocumented-content-type",
        "missing-property",
        "undocumented-property",
        "amount-as-string",
        "amount-over-6-places",
        "bad-timestamp",
        "problem-as-plain-json",
        "undocumented-problem-code",
        "problem-status-lies",
        "problem-instance-lies",
        "problem-request-id-lies",
        "problem-without-detail",
    ],
)
def test_the_checker_rejects_responses_that_break_the_spec(
    status: int, content: bytes, content_type: str
) -> None:
    with pytest.raises(AssertionError):
        check_response(_response(status, content, content_type))


def _spec_admits(schema: dict[str, Any], value: Any) -> bool:
    validator = OAS31Validator(
        {**schema, "components": SPEC["components"]}, format_checker=OAS31Validator.FORMAT_CHECKER
    )
    return bool(validator.is_valid(value))


@pytest.mark.parametrize(
    "amount",
    ["0", "0.0", "000.000000", "0.000001", "1", "12.5", "-1", "1.0000001", "1e3", 0, 7],
)
async def test_the_spec_and_the_server_agree_on_positive_amounts(
    project: Project, amount: Any
) -> None:
    # The fuzzer generates from the spec: what it calls valid, the server must accept.
    await project.user("u")
    schema = SPEC["components"]["schemas"]["CreditIn"]["properties"]["amount"]
    r = await project.post("/v1/users/u/credits", {"amount": amount})
    assert (r.status_code == 201) == _spec_admits(schema, amount), r.text


@pytest.mark.parametrize("key", ["k", "a b", "k" * 255, "k" * 256, "a\tb"])
async def test_the_spec_and_the_server_agree_on_idempotency_keys(
    project: Project, key: str
) -> None:
    schema = next(
        p["schema"]
        for p in SPEC["paths"]["/v1/users"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    )
    r = await project.post("/v1/users", {"id": "u"}, headers={"Idempotency-Key": key})
    assert (r.status_code == 201) == _spec_admits(schema, key), r.text


@pytest.mark.parametrize(
    "patch",
    [{"active": None}, {"max_per_user": None}, {"description": None}, {"max_redemptions": None}],
)
async def test_the_spec_and_the_server_agree_on_nulls_in_a_promo_patch(
    project: Project, patch: dict[str, Any]
) -> None:
    assert (await project.post("/v1/promos", {"code": "p", "credits": 1})).status_code == 201
    schema = SPEC["components"]["schemas"]["PromoPatch"]
    r = await project.patch("/v1/promos/p", patch)
    assert (r.status_code == 200) == _spec_admits(schema, patch), r.text
