"""The metering routes call their endpoints directly (no general dependency solving) when
the request is well-formed, and answer malformed ones exactly as FastAPI does."""

from __future__ import annotations

import pytest

from app.routing import TransactionalRoute
from app.transactions.router import router as transactions_router
from tests.conftest import Project

HOT = {
    ("POST", "/v1/transactions/start"),
    ("POST", "/v1/transactions/{transaction_id}/complete"),
    ("POST", "/v1/usage"),
    ("POST", "/v1/check"),
    ("GET", "/v1/transactions/{transaction_id}"),
}


def test_the_metering_routes_call_their_endpoints_directly() -> None:
    routes = {
        (method, route.path): route
        for route in transactions_router.routes
        if isinstance(route, TransactionalRoute)
        for method in route.methods or ()
    }
    assert set(routes) >= HOT
    for key in HOT:
        assert routes[key].calls_directly, key
    # Query parameters (the list's filters and page) take FastAPI's way.
    assert not routes[("GET", "/v1/transactions")].calls_directly


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (
            b'{"user_id": "u", "model": "m", "provisional_tokens": {"input_tokens": -1}}',
            "application/json",
        ),
        (b'{"user_id": "u", "model": "m"', "application/json"),
        (b"", "application/json"),
        (b'{"user_id": "u", "model": "m"}', "text/plain"),
    ],
    ids=["invalid", "malformed", "empty", "not-json"],
)
async def test_malformed_bodies_get_fastapis_answer(
    project: Project, content: bytes, content_type: str
) -> None:
    """Whatever the direct call does not take is answered by FastAPI's own handler: the
    same 422 problem for an invalid body, and nothing is charged."""
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    r = await project.client.post(
        "/v1/transactions/start",
        content=content,
        headers={**project.headers, "content-type": content_type},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "validation_error"
    assert (await project.get("/v1/transactions", params={"user_id": "u"})).json()["data"] == []


async def test_fastapis_order_parse_then_authenticate_then_validate(project: Project) -> None:
    """As FastAPI orders it: malformed JSON is a 422 before the key is looked at; a body
    that parses but does not validate is checked after the key."""
    wrong = {"content-type": "application/json", "authorization": "Bearer wrong"}
    malformed = await project.client.post("/v1/transactions/start", content=b"{", headers=wrong)
    assert malformed.status_code == 422
    invalid = await project.client.post("/v1/transactions/start", content=b"{}", headers=wrong)
    assert invalid.status_code == 401


async def test_constrained_path_parameters_take_fastapis_way(project: Project) -> None:
    """A path parameter with a pattern or a length limit is validated by FastAPI."""
    r = await project.put("/v1/jobs/has space", {"price": 1})
    assert r.status_code == 422, r.text
