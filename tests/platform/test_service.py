"""Service endpoints, API keys, project settings, request ids, problem+json, rate limits."""

from __future__ import annotations

import hashlib

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.core.settings import ApiSettings, Settings
from app.db.models import ApiKey
from app.db.session import Database
from app.main import create_app
from tests.conftest import Project, create_project
from tests.helpers import body


async def test_healthz_does_no_io(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_readyz_reports_database_at_head(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_metrics_expose_request_counters(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert 'creditd_http_requests_total{method="GET",route="/healthz",status="200"}' in r.text


async def test_request_id_is_echoed_or_generated(project: Project) -> None:
    r = await project.get("/v1/project", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = await project.get("/v1/project")
    assert len(generated.headers["x-request-id"]) == 32


async def test_unknown_route_is_a_problem_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/errors/not_found"


async def test_api_key_is_shown_once_and_stored_only_as_a_hash(
    project: Project, db: Database
) -> None:
    r = await project.post("/v1/api-keys", {"name": "ci", "scopes": ["usage", "read"]})
    assert r.status_code == 201
    created = r.json()
    secret = created["key"]
    assert secret.startswith("ck_")
    assert len(secret) >= 3 + 43  # 256 bits, url-safe base64
    assert created["prefix"] == secret[:12]
    assert created["scopes"] == ["read", "usage"]
    listed = (await project.get("/v1/api-keys")).json()["data"]
    assert all("key" not in k for k in listed)
    async with db.transaction() as session:
        stored = (await session.execute(select(ApiKey).where(ApiKey.name == "ci"))).scalars().all()
    assert [k.key_hash for k in stored if str(k.project_id) == project.id] == [
        hashlib.sha256(secret.encode()).hexdigest()
    ]


async def test_project_settings_can_be_read_and_patched(project: Project) -> None:
    got = body(await project.get("/v1/project"))
    assert got["settings"] == {
        "auto_create_users": True,
        "default_hold_ttl_seconds": 600,
        "low_balance_thresholds": [],
        "credits_per_unit": {},
        "team_usage_default": "user",
    }
    r = await project.patch(
        "/v1/project", {"name": "renamed", "settings": {"default_hold_ttl_seconds": 30}}
    )
    assert r.status_code == 200
    patched = body(r)
    assert patched["name"] == "renamed"
    assert patched["settings"]["default_hold_ttl_seconds"] == 30
    assert patched["settings"]["auto_create_users"] is True


async def test_operator_lists_and_gets_projects(
    client: httpx.AsyncClient, project: Project
) -> None:
    from tests.conftest import ADMIN_TOKEN

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    one = await client.get(f"/v1/admin/projects/{project.id}", headers=headers)
    assert one.status_code == 200
    assert one.json()["id"] == project.id
    missing = await client.get("/v1/admin/projects/not-an-id", headers=headers)
    assert missing.status_code == 404


async def test_rate_limit_answers_429_with_headers(settings: Settings, app: FastAPI) -> None:
    limited = create_app(
        settings.model_copy(
            update={"api": ApiSettings(rate_limit_per_second=0.001, rate_limit_burst=2)}
        )
    )
    limited.state.db = app.state.db  # share the running engine; lifespan is not needed here
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=limited), base_url="http://t"
    ) as c:
        project = await create_project(c)
        statuses = [(await project.get("/v1/project")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        r = await project.get("/v1/project")
    assert r.json()["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-limit"] == "2"
    assert r.headers["ratelimit-remaining"] == "0"
    assert "ratelimit-reset" in r.headers
