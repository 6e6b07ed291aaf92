"""What the webhook endpoints API refuses: URLs creditd will not call, unknown event types,
keys without the admin scope, and every other project's ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core.settings import Settings, WebhookSettings
from app.db.session import Database
from app.main import create_app
from tests.conftest import Project, create_project
from tests.webhooks.endpoint_helpers import URL, create, forget_endpoints, grant_event, rows

BASE = "/v1/webhook-endpoints"


@pytest.fixture
async def hooks(project: Project, db: Database) -> AsyncIterator[Project]:
    """The test's project, left without endpoints at the end."""
    yield project
    await forget_endpoints(db, project)


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


# --- URLs --------------------------------------------------------------------------------------

REFUSED_URLS = {
    "http": ("http://hooks.invalid/x", "https"),
    "userinfo": ("https://user:pw@hooks.invalid/x", "user name or password"),
    "user-only": ("https://user@hooks.invalid/x", "user name or password"),
    "relative": ("/hooks", "absolute"),
    "no-host": ("https:///hooks", "absolute"),
    "ftp": ("ftp://hooks.invalid/x", "absolute"),
    "space": ("https://hooks.invalid/a b", "spaces"),
    "bad-port": ("https://hooks.invalid:99999/x", "port"),
    "port-zero": ("https://hooks.invalid:0/x", "port"),
    "bad-host": ("https://bad_host!.invalid/x", "host"),
    "loopback": ("https://127.0.0.1/x", "loopback"),
    "private": ("https://10.0.0.1/x", "private"),
    "metadata": ("https://169.254.169.254/latest/meta-data", "metadata"),
    "ipv6-loopback": ("https://[::1]:8443/x", "loopback"),
    "ipv6-private": ("https://[fc00::1]/x", "private"),
    "ipv4-mapped": ("https://[::ffff:127.0.0.1]/x", "loopback"),
    "decimal-ipv4": ("https://2130706433/x", "loopback"),
    "short-ipv4": ("https://127.1/x", "loopback"),
    "hex-ipv4": ("https://0x7f000001/x", "loopback"),
    "unspecified": ("https://0.0.0.0/x", "unspecified"),
    "localhost": ("https://localhost:8000/x", "localhost"),
    "localhost-dot": ("https://LocalHost./x", "localhost"),
    "sub-localhost": ("https://api.localhost/x", "localhost"),
    "full-width-ipv4": ("https://\uff11\uff12\uff17.0.0.1/x", "loopback"),
    "ipv6-zone": ("https://[fe80::1%25eth0]/x", "link-local"),
    "ip-future": ("https://[v1.fe]/x", "IPv6"),
    "open-bracket": ("https://[::1/x", "not a valid URL"),
    "nbsp": ("https://hooks.invalid/\u00a0", "spaces"),
}


@pytest.mark.parametrize("name", list(REFUSED_URLS))
async def test_a_url_creditd_will_not_call_is_422(hooks: Project, db: Database, name: str) -> None:
    url, reason = REFUSED_URLS[name]
    problem = _problem(await hooks.post(BASE, {"url": url}), 422, "invalid_webhook_url")
    assert reason in problem["detail"]
    assert problem["errors"] == [
        {"loc": ["body", "url"], "msg": problem["detail"], "type": "invalid_webhook_url"}
    ]
    stored = await rows(db, "SELECT id FROM webhook_endpoints WHERE project_id = :p", p=hooks.id)
    assert stored == []


async def test_a_patch_to_a_refused_url_is_422_and_changes_nothing(hooks: Project) -> None:
    created = await create(hooks)
    r = await hooks.patch(f"{BASE}/{created['id']}", {"url": "https://10.1.2.3/x"})
    _problem(r, 422, "invalid_webhook_url")
    assert (await hooks.get(f"{BASE}/{created['id']}")).json()["url"] == URL


async def test_a_url_over_2048_characters_is_422(hooks: Project) -> None:
    url = "https://hooks.invalid/" + "a" * 2048
    problem = _problem(await hooks.post(BASE, {"url": url}), 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["body", "url"]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.invalid/creditd?token=abc",
        "HTTPS://Hooks.Invalid:8443/x",
        "https://bücher.invalid/x",
        "https://93.184.215.14/x",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
    ],
)
async def test_a_public_https_url_is_accepted(hooks: Project, url: str) -> None:
    assert (await create(hooks, url=url))["url"] == url


@pytest.fixture
async def lenient_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app where an operator allows http and private targets (development, tests)."""
    webhooks = WebhookSettings(allow_http=True, allow_private_targets=True)
    application = create_app(settings.model_copy(update={"webhooks": webhooks}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://localhost:8080/x", "https://[::1]/x"]
)
async def test_http_and_private_targets_pass_where_the_operator_allows_them(
    lenient_app: FastAPI, db: Database, url: str
) -> None:
    transport = httpx.ASGITransport(app=lenient_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        project = await create_project(client)
        try:
            assert (await create(project, url=url))["url"] == url
        finally:
            await forget_endpoints(db, project)


# --- event patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "fragment"),
    [
        (["payment.succeded"], "did you mean 'payment.succeeded'"),
        (["nothing.*"], "'nothing.*' is not an event type"),
        (["Payment.*"], "is not an event type"),
        (["payment.**"], "is not an event type"),
        (["*.succeeded"], "is not an event type"),
        ([""], "at least 1 character"),
        ([], "at least 1 item"),
    ],
)
async def test_an_unknown_event_pattern_is_422(
    hooks: Project, events: list[str], fragment: str
) -> None:
    problem = _problem(
        await hooks.post(BASE, {"url": URL, "events": events}), 422, "validation_error"
    )
    assert fragment in problem["errors"][0]["msg"], problem
    assert problem["errors"][0]["loc"][:2] == ["body", "events"]


async def test_the_bad_pattern_is_named_by_its_place(hooks: Project) -> None:
    body = {"url": URL, "events": ["payment.*", "credits.granted", "nope"]}
    problem = _problem(await hooks.post(BASE, body), 422, "validation_error")
    assert [e["loc"] for e in problem["errors"]] == [["body", "events", "2"]]


async def test_more_than_100_patterns_is_422(hooks: Project) -> None:
    body = {"url": URL, "events": ["*"] * 101}
    _problem(await hooks.post(BASE, body), 422, "validation_error")


async def test_a_patch_with_an_unknown_pattern_changes_nothing(hooks: Project) -> None:
    created = await create(hooks, events=["payment.*"])
    r = await hooks.patch(f"{BASE}/{created['id']}", {"events": ["payments.*"]})
    _problem(r, 422, "validation_error")
    assert (await hooks.get(f"{BASE}/{created['id']}")).json()["events"] == ["payment.*"]


# --- scopes ------------------------------------------------------------------------------------


async def _keyed(project: Project, scopes: list[str]) -> Project:
    r = await project.post("/v1/api-keys", {"name": "-".join(scopes), "scopes": scopes})
    assert r.status_code == 201, r.text
    return Project(id=project.id, key=r.json()["key"], client=project.client)


def _calls(endpoint_id: str, event_id: str) -> list[tuple[str, str, Any]]:
    one = f"{BASE}/{endpoint_id}"
    return [
        ("POST", BASE, {"url": URL}),
        ("GET", BASE, None),
        ("GET", one, None),
        ("PATCH", one, {"description": "x"}),
        ("DELETE", one, None),
        ("POST", f"{one}/rotate-secret", None),
        ("POST", f"{one}/test", None),
        ("GET", f"{one}/deliveries", None),
        ("POST", f"/v1/events/{event_id}/redeliver", None),
    ]


@pytest.mark.parametrize("scopes", [["read"], ["write"], ["usage"], ["write", "read"]])
async def test_only_admin_keys_manage_webhook_endpoints(
    hooks: Project, db: Database, scopes: list[str]
) -> None:
    created = await create(hooks)
    event_id = await grant_event(hooks)
    before = await rows(db, "SELECT * FROM webhook_endpoints WHERE project_id = :p", p=hooks.id)
    keyed = await _keyed(hooks, scopes)
    for method, path, body in _calls(created["id"], event_id):
        r = await keyed.request(method, path, body)
        _problem(r, 403, "insufficient_scope")
    after = await rows(db, "SELECT * FROM webhook_endpoints WHERE project_id = :p", p=hooks.id)
    assert after == before
    assert (
        await rows(db, "SELECT id FROM webhook_deliveries WHERE project_id = :p", p=hooks.id) == []
    )
    # Reading the event log stays open to read keys.
    assert (await keyed.get(f"/v1/events/{event_id}")).status_code == (
        403 if scopes == ["usage"] else 200
    )


# --- tenants -----------------------------------------------------------------------------------


async def test_another_projects_ids_answer_404_on_every_route(
    hooks: Project, other_project: Project, db: Database
) -> None:
    a, b = hooks, other_project
    a_endpoint = await create(a)
    a_event = await grant_event(a)
    b_endpoint = await create(b)
    b_event = await grant_event(b)
    try:
        one = f"{BASE}/{a_endpoint['id']}"
        calls = [
            ("GET", one, None, "webhook_endpoint_not_found"),
            ("PATCH", one, {"enabled": False}, "webhook_endpoint_not_found"),
            ("DELETE", one, None, "webhook_endpoint_not_found"),
            ("POST", f"{one}/rotate-secret", None, "webhook_endpoint_not_found"),
            ("POST", f"{one}/test", None, "webhook_endpoint_not_found"),
            ("GET", f"{one}/deliveries", None, "webhook_endpoint_not_found"),
            ("POST", f"/v1/events/{a_event}/redeliver", None, "event_not_found"),
            (
                "POST",
                f"/v1/events/{a_event}/redeliver",
                {"endpoint_id": b_endpoint["id"]},
                "event_not_found",
            ),
            # B's own event, to A's endpoint: the endpoint is not found.
            (
                "POST",
                f"/v1/events/{b_event}/redeliver",
                {"endpoint_id": a_endpoint["id"]},
                "webhook_endpoint_not_found",
            ),
        ]
        before = await rows(db, "SELECT * FROM webhook_endpoints ORDER BY id")
        for method, path, body, code in calls:
            _problem(await b.request(method, path, body), 404, code)

        assert await rows(db, "SELECT * FROM webhook_endpoints ORDER BY id") == before
        both = [a_event, b_event]
        owed = "SELECT id FROM webhook_deliveries WHERE event_id = ANY(CAST(:e AS uuid[]))"
        assert await rows(db, owed, e=both) == []
        tests = "SELECT id FROM events WHERE type = 'webhook.test' AND project_id = ANY(:p)"
        assert await rows(db, tests, p=[uuid.UUID(a.id), uuid.UUID(b.id)]) == []
        assert [e["id"] for e in (await b.get(BASE)).json()["data"]] == [b_endpoint["id"]]
        # The owner finds each of them.
        assert (await a.get(one)).json()["enabled"] is True
        assert (await a.get(f"{one}/deliveries")).status_code == 200
    finally:
        await forget_endpoints(db, b)


async def test_an_unknown_event_is_404_on_redeliver(hooks: Project) -> None:
    for event_id in (str(uuid.uuid4()), "not-a-uuid"):
        r = await hooks.post(f"/v1/events/{event_id}/redeliver")
        _problem(r, 404, "event_not_found")
