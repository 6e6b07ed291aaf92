"""The metering lane (app/lane.py) answers exactly as the FastAPI app does.

Every request below is sent twice, once with the lane and once with the app's lane turned
off, on fresh users in the same state: the answers must match (status, the headers that
matter, and the body but for the ids and request ids that differ by nature).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from app.lane import LANE_PATHS, CreditdAPI, Lane, build
from tests.conftest import Project

VARIABLE = {"transaction_id", "instance", "request_id", "expires_at", "id"}


@asynccontextmanager
async def _lane(app: FastAPI, *, on: bool) -> AsyncIterator[None]:
    assert isinstance(app, CreditdAPI)
    saved = app._lane, app._lane_built
    app._lane, app._lane_built = (build(app, app.lane_max_body_bytes) if on else None), True
    try:
        yield
    finally:
        app._lane, app._lane_built = saved


def _comparable(r: httpx.Response) -> tuple[int, str | None, str | None, Any]:
    content_type = r.headers.get("content-type")
    body: Any = r.json() if r.content and "json" in (content_type or "") else r.text
    if isinstance(body, dict):
        body = {k: ("<var>" if k in VARIABLE else v) for k, v in body.items()}
    return r.status_code, content_type, r.headers.get("idempotent-replayed"), body


def test_the_lane_serves_the_four_metering_routes(app: FastAPI) -> None:
    """Found through FastAPI's included routers: an upgrade that hides them fails here."""
    lane = build(app, 1024)
    assert isinstance(lane, Lane)
    served = {*lane.static, *(e.route.path for e in lane.templated)}
    assert served == LANE_PATHS


Request = Callable[[Project, str], Awaitable[httpx.Response]]


async def _start(project: Project, user: str, **extra: Any) -> httpx.Response:
    body = {"user_id": user, "model": "gpt", "provisional_tokens": {"input_tokens": 100}}
    return await project.post("/v1/transactions/start", {**body, **extra})


async def _complete_unknown(project: Project, user: str) -> httpx.Response:
    return await project.post(f"/v1/transactions/{uuid.uuid4()}/complete", {"success": True})


async def _complete_bad_id(project: Project, user: str) -> httpx.Response:
    return await project.post("/v1/transactions/not-an-id/complete", {"success": True})


async def _complete_twice(project: Project, user: str) -> httpx.Response:
    started = (await _start(project, user)).json()
    path = f"/v1/transactions/{started['transaction_id']}/complete"
    first = await project.post(path, {"success": True})
    assert first.status_code == 200, first.text
    return await project.post(path, {"success": False})  # a different completion: 409


async def _usage(project: Project, user: str) -> httpx.Response:
    return await project.post("/v1/usage", {"user_id": user, "model": "gpt", "tokens": {}})


async def _check_too_much(project: Project, user: str) -> httpx.Response:
    return await project.post("/v1/check", {"user_id": user, "amount": "1000000"})


async def _check_invalid(project: Project, user: str) -> httpx.Response:
    return await project.post("/v1/check", {"user_id": user, "amount": "-1"})


async def _start_malformed(project: Project, user: str) -> httpx.Response:
    return await project.post(
        "/v1/transactions/start",
        content=b'{"user_id": "' + user.encode() + b'", "model": ',
        headers={"content-type": "application/json"},
    )


async def _start_not_json(project: Project, user: str) -> httpx.Response:
    return await project.post(
        "/v1/transactions/start", content=b"user_id=x", headers={"content-type": "text/plain"}
    )


async def _start_oversized(project: Project, user: str) -> httpx.Response:
    return await _start(project, user, metadata={"pad": "x" * 2_000_000})


async def _start_no_key(project: Project, user: str) -> httpx.Response:
    body = {"user_id": user, "model": "gpt"}
    return await project.client.post("/v1/transactions/start", json=body)


async def _start_unknown_model(project: Project, user: str) -> httpx.Response:
    return await project.post("/v1/transactions/start", {"user_id": user, "model": "none"})


async def _keyed_replay(project: Project, user: str) -> httpx.Response:
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"user_id": user, "model": "gpt", "provisional_tokens": {"input_tokens": 10}}
    first = await project.post("/v1/transactions/start", body, headers=headers)
    again = await project.post("/v1/transactions/start", body, headers=headers)
    assert again.content == first.content
    return again


async def _keyed_reused(project: Project, user: str) -> httpx.Response:
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    await project.post("/v1/check", {"user_id": user, "amount": "1"}, headers=headers)
    return await project.post("/v1/check", {"user_id": user, "amount": "2"}, headers=headers)


CASES: dict[str, Request] = {
    "start": _start,
    "complete-unknown": _complete_unknown,
    "complete-bad-id": _complete_bad_id,
    "complete-twice": _complete_twice,
    "usage": _usage,
    "check-denied": _check_too_much,
    "check-invalid": _check_invalid,
    "start-malformed": _start_malformed,
    "start-not-json": _start_not_json,
    "start-oversized": _start_oversized,
    "start-no-key": _start_no_key,
    "start-unknown-model": _start_unknown_model,
    "keyed-replay": _keyed_replay,
    "keyed-reused": _keyed_reused,
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lane_answers_as_the_app_does(app: FastAPI, project: Project, case: str) -> None:
    await project.price("gpt", 1, 2)
    answers = []
    for on in (True, False):
        user = f"lane-{int(on)}-{uuid.uuid4().hex[:8]}"  # same length: error offsets match
        await project.user(user, credits=50)
        async with _lane(app, on=on):
            r = await CASES[case](project, user)
        assert r.headers.get("x-request-id"), r.headers
        answers.append(_comparable(r))
    assert answers[0] == answers[1]


async def test_the_lane_keeps_request_ids_and_metrics(app: FastAPI, project: Project) -> None:
    labels = {"method": "POST", "route": "/v1/check", "status": "200"}
    before = REGISTRY.get_sample_value("creditd_http_requests_total", labels) or 0
    await project.user("lane-metrics", credits=1)
    async with _lane(app, on=True):
        r = await project.post(
            "/v1/check",
            {"user_id": "lane-metrics", "amount": "1"},
            headers={"X-Request-Id": "lane-test-1"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "lane-test-1"
    assert REGISTRY.get_sample_value("creditd_http_requests_total", labels) == before + 1
