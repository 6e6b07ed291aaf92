"""Poisonous free-form JSON (metadata, tier features) is refused with 422 and changes nothing.

Bodies are sent as raw bytes so that 1e20, NaN and deep nesting reach the server exactly as
written. Every read endpoint must keep answering 200 afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import Project
from tests.helpers import body

JSON = {"Content-Type": "application/json"}
USER = "u_1"
TIER = "t_1"


def nested(levels: int) -> str:
    """A metadata object nested ``levels`` deep, the object itself being level 1."""
    return '{"x":' * (levels - 1) + '{"x":1}' + "}" * (levels - 1)


@dataclass
class Env:
    p: Project
    pending_id: str


@pytest.fixture
async def env(project: Project) -> Env:
    await project.price("_default", 1, 1)
    await project.user(USER, credits=100)
    r = await project.post("/v1/tiers", {"id": TIER, "name": "T", "features": {"a": 1}})
    assert r.status_code == 201, r.text
    r = await project.post("/v1/transactions/start", {"user_id": USER, "model": "m"})
    assert r.status_code == 201, r.text
    return Env(p=project, pending_id=body(r)["transaction_id"])


async def snapshot(p: Project) -> dict[str, Any]:
    """Everything a free-form write could touch; every read endpoint must answer 200."""
    out: dict[str, Any] = {}
    for path in (
        "/v1/users?limit=100",
        f"/v1/users/{USER}",
        f"/v1/users/{USER}/ledger?limit=100",
        "/v1/transactions?limit=100",
        "/v1/tiers?limit=100",
        f"/v1/tiers/{TIER}",
        "/v1/events?limit=100",
    ):
        r = await p.get(path)
        assert r.status_code == 200, (path, r.text)
        out[path] = body(r)
    return out


# Where free-form JSON is accepted: (method, path, body with {v} for the value, field).
TARGETS: dict[str, tuple[str, str, str, str]] = {
    "usage.metadata": (
        "POST",
        "/v1/usage",
        '{"user_id": "u_new", "model": "m", "tokens": {"input_tokens": 1}, "metadata": {v}}',
        "metadata",
    ),
    "start.metadata": (
        "POST",
        "/v1/transactions/start",
        '{"user_id": "u_new", "model": "m", "metadata": {v}}',
        "metadata",
    ),
    "complete.metadata": (
        "POST",
        "/v1/transactions/{pending}/complete",
        '{"success": true, "metadata": {v}}',
        "metadata",
    ),
    "users.create.metadata": ("POST", "/v1/users", '{"id": "u_new", "metadata": {v}}', "metadata"),
    "users.patch.metadata": ("PATCH", f"/v1/users/{USER}", '{"metadata": {v}}', "metadata"),
    "tiers.create.features": (
        "POST",
        "/v1/tiers",
        '{"id": "t_new", "name": "New", "features": {v}}',
        "features",
    ),
    "tiers.patch.features": ("PATCH", f"/v1/tiers/{TIER}", '{"features": {v}}', "features"),
}

POISON = {
    "1e20": '{"x": 1e20}',
    "-1e19": '{"x": -1e19}',
    "2e19": '{"x": 2e19}',
    "1e300": '{"x": 1e300}',
    "1e20_with_a_point": '{"x": 100000000000000000000.0}',  # written as an integer by us
    "9.3e18": '{"x": [9.3e18]}',  # 9300000000000000000: just past the int64 maximum
    "NaN": '{"x": NaN}',
    "Infinity": '{"x": Infinity}',
    "-Infinity": '{"x": {"y": -Infinity}}',
    "33_deep": nested(33),
    "254_deep": nested(254),
    "17_KiB": '{"x": "' + "a" * (17 * 1024) + '"}',
}


async def send(p: Project, method: str, path: str, raw: str) -> httpx.Response:
    return await p.client.request(method, path, content=raw.encode(), headers={**p.headers, **JSON})


def assert_field_problem(r: httpx.Response, field: str) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = r.json()
    assert problem["code"] == "validation_error"
    assert ["body", field] in [e["loc"] for e in problem["errors"]], problem
    assert field in problem["detail"]
    return problem


@pytest.mark.parametrize("value", list(POISON.values()), ids=list(POISON))
@pytest.mark.parametrize("target", list(TARGETS))
async def test_poisonous_free_form_json_is_422_and_changes_nothing(
    env: Env, target: str, value: str
) -> None:
    method, path, template, field = TARGETS[target]
    before = await snapshot(env.p)
    raw = template.replace("{v}", value)
    r = await send(env.p, method, path.format(pending=env.pending_id), raw)
    assert_field_problem(r, field)
    assert await snapshot(env.p) == before
    # Nothing was created either (the usage calls would have auto-created their user).
    assert (await env.p.get("/v1/users/u_new")).status_code == 404
    assert (await env.p.get("/v1/tiers/t_new")).status_code == 404


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('{"x": 1e20}', "the number at /x is an integer outside the signed 64-bit range"),
        ('{"a": [1, {"b": NaN}]}', "the number at /a/1/b is not a finite number"),
        (nested(33), "nested deeper than 32 levels"),
        ('{"x": "' + "a" * 17000 + '"}', "larger than 16384 bytes"),
    ],
    ids=["int64", "nan", "depth", "size"],
)
async def test_the_problem_names_the_field_and_the_reason(
    env: Env, value: str, reason: str
) -> None:
    raw = '{"id": "u_new", "metadata": ' + value + "}"
    problem = assert_field_problem(await send(env.p, "POST", "/v1/users", raw), "metadata")
    assert reason in problem["detail"], problem["detail"]


async def test_an_integer_literal_beyond_64_bits_is_refused_by_the_parser(env: Env) -> None:
    """Python parses it as an int of any size: refused before validation, naming the cause."""
    before = await snapshot(env.p)
    raw = '{"id": "u_new", "metadata": {"x": 9223372036854775808}}'
    r = await send(env.p, "POST", "/v1/users", raw)
    assert r.status_code == 422, r.text
    assert "number out of range" in r.json()["detail"]
    assert await snapshot(env.p) == before


async def test_nesting_beyond_the_parser_is_422_not_400(env: Env) -> None:
    before = await snapshot(env.p)
    raw = '{"id": "u_new", "metadata": ' + "[" * 5000 + "]" * 5000 + "}"
    r = await send(env.p, "POST", "/v1/users", raw)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert await snapshot(env.p) == before


# --- the edges that are accepted, and read back exactly -------------------------------------

ACCEPTED = {
    "int64_max": ("9223372036854775807", 2**63 - 1),
    "int64_min": ("-9223372036854775808", -(2**63)),
    "9.2e18": ("9.2e18", 9_200_000_000_000_000_000),
    "1e5": ("1e5", 100_000),
    "tiny_fraction": ("1.5e-300", Decimal("1.5e-300")),
    "trailing_zeros": ("1.50", Decimal("1.5")),
    "32_deep": (nested(31), json.loads(nested(31))),
}


@pytest.mark.parametrize(("literal", "expected"), list(ACCEPTED.values()), ids=list(ACCEPTED))
async def test_free_form_edges_are_accepted_and_read_back(
    env: Env, literal: str, expected: Any
) -> None:
    raw = '{"id": "u_edge", "metadata": {"x": ' + literal + "}}"  # nested(31) + 1 = 32 deep
    r = await send(env.p, "POST", "/v1/users", raw)
    assert r.status_code == 201, r.text
    for response in (r, await env.p.get("/v1/users/u_edge")):
        assert body(response)["metadata"] == {"x": expected}
    listed = body(await env.p.get("/v1/users?limit=100"))["data"]
    assert [u["metadata"] for u in listed if u["id"] == "u_edge"] == [{"x": expected}]


async def test_metadata_of_exactly_16_KiB_is_accepted(env: Env) -> None:
    envelope = '{"x":""}'
    value = '{"x":"' + "é" * ((16 * 1024 - len(envelope)) // 2) + '"}'  # 2 bytes per é
    assert len(value.encode()) == 16 * 1024
    r = await send(env.p, "POST", "/v1/usage", TARGETS["usage.metadata"][2].replace("{v}", value))
    assert r.status_code == 201, r.text
    txn = body(await env.p.get(f"/v1/transactions/{body(r)['transaction_id']}"))
    assert txn["metadata"] == json.loads(value)
    one_more = value.replace('"x":"', '"x":"a')
    r = await send(env.p, "POST", "/v1/users", '{"id": "u_new", "metadata": ' + one_more + "}")
    assert_field_problem(r, "metadata")


# --- merges: the stored result obeys the same limits ---------------------------------------


async def test_complete_metadata_merged_over_the_limit_is_422_and_changes_nothing(
    env: Env,
) -> None:
    half = "a" * (9 * 1024)
    r = await env.p.post(
        "/v1/transactions/start", {"user_id": USER, "model": "m", "metadata": {"a": half}}
    )
    assert r.status_code == 201, r.text
    txn_id = body(r)["transaction_id"]
    before = await snapshot(env.p)
    r = await env.p.post(
        f"/v1/transactions/{txn_id}/complete", {"success": True, "metadata": {"b": half}}
    )
    problem = assert_field_problem(r, "metadata")
    assert "merged" in problem["detail"]
    assert await snapshot(env.p) == before
    assert body(await env.p.get(f"/v1/transactions/{txn_id}"))["status"] == "pending"
    # The same completion with metadata that fits goes through.
    r = await env.p.post(
        f"/v1/transactions/{txn_id}/complete", {"success": True, "metadata": {"b": "ok"}}
    )
    assert r.status_code == 200, r.text
    stored = body(await env.p.get(f"/v1/transactions/{txn_id}"))["metadata"]
    assert stored == {"a": half, "b": "ok"}


async def test_user_metadata_patched_over_the_limit_is_422_and_changes_nothing(
    env: Env,
) -> None:
    half = "a" * (9 * 1024)
    r = await env.p.patch(f"/v1/users/{USER}", {"metadata": {"a": half}})
    assert r.status_code == 200, r.text
    before = await snapshot(env.p)
    r = await env.p.patch(f"/v1/users/{USER}", {"metadata": {"b": half}})
    problem = assert_field_problem(r, "metadata")
    assert "merged" in problem["detail"]
    assert await snapshot(env.p) == before
    # Replacing the key (rather than adding one) stays within the limit.
    r = await env.p.patch(f"/v1/users/{USER}", {"metadata": {"a": None, "b": half}})
    assert r.status_code == 200, r.text
    assert body(r)["metadata"] == {"b": half}
