"""Inputs PostgreSQL cannot store, extreme amounts, and other edges: clear 4xx, never a 500."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, complete, start

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/users", b'{"id": "u2", "metadata": {"a": "x\\u0000y"}}'),
        ("/v1/users", b'{"id": "u2", "metadata": {"a": "\\ud800"}}'),
        ("/v1/users", b'{"id": "u2", "metadata": {"n": 99999999999999999999999}}'),
        ("/v1/users", b'{"id": "u2", "metadata": {"n": 1e200000}}'),
        ("/v1/users/u/credits", b'{"amount": 1, "reason": "a\\u0000b"}'),
        ("/v1/transactions/start", b'{"user_id": "u", "model": "m\\u0000"}'),
        ("/v1/users/u/credits", b'{"amount": 1.' + b"0" * 70 + b"1}"),
    ],
    ids=[
        "nul",
        "lone-surrogate",
        "int-over-64-bits",
        "huge-exponent",
        "nul-reason",
        "nul-model",
        "more-digits-than-the-context",
    ],
)
async def test_unstorable_bodies_are_422_and_change_nothing(
    project: Project, path: str, raw: bytes
) -> None:
    await project.user("u", credits=5)
    r = await project.post(path, content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert (await project.get("/v1/users/u2")).status_code == 404
    assert await balance(project, "u") == {"available": 5, "held": 0, "total": 5}


async def test_long_exact_numbers_in_metadata_round_trip(project: Project) -> None:
    digits = "1." + "0" * 70 + "1"
    raw = b'{"id": "u", "metadata": {"x": ' + digits.encode() + b', "y": 1e5}}'
    r = await project.post("/v1/users", content=raw, headers=JSON)
    assert r.status_code == 201, r.text
    assert body(r)["metadata"] == {"x": Decimal(digits), "y": Decimal(100000)}
    assert f'"x":{digits}' in (await project.get("/v1/users/u")).text


async def test_nul_in_path_or_query_is_422(project: Project) -> None:
    assert (
        await project.put("/v1/models/a%00b", {"input_price_per_1k": 1, "output_price_per_1k": 1})
    ).status_code == 422
    assert (await project.get("/v1/events", params={"type": "a\x00b"})).status_code == 422


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:00", "0001-01-01T00:00:00+01:00"])
async def test_timestamps_outside_postgres_range_are_422(project: Project, stamp: str) -> None:
    await project.user("u")
    r = await project.post("/v1/users/u/credits", {"amount": 1, "expires_at": stamp})
    assert r.status_code == 422
    assert (
        await project.get("/v1/transactions", params={"created_after": stamp})
    ).status_code == 422


async def test_a_non_ascii_digit_cursor_is_422(project: Project) -> None:
    await project.user("u")
    assert (
        await project.get("/v1/users/u/ledger", params={"starting_after": "²"})
    ).status_code == 422


async def test_null_settings_in_a_project_patch_leave_them_unchanged(project: Project) -> None:
    r = await project.patch("/v1/project", {"settings": {"auto_create_users": None}})
    assert r.status_code == 200
    assert body(r)["settings"]["auto_create_users"] is True


async def test_x_project_id_compares_as_a_uuid(project: Project) -> None:
    r = await project.get("/v1/project", headers={"X-Project-Id": project.id.upper()})
    assert r.status_code == 200


async def test_a_cost_beyond_15_integer_digits_is_422(project: Project) -> None:
    await project.price("_default", Decimal("100000000000000"), 0)  # 10^14 per 1K tokens
    await project.user("u")
    r = await project.post(
        "/v1/usage", {"user_id": "u", "model": "m", "tokens": {"input_tokens": 10**12}}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "cost_too_large"
    assert (await balance(project, "u"))["total"] == 0


async def test_huge_exact_charges_keep_the_ledger_exact(project: Project, db: Database) -> None:
    # Each usage costs 999,999,999,999.000001; eleven of them leave 22 significant digits.
    await project.price("_default", Decimal("999999999.999"), 0, request_price=Decimal("0.000001"))
    await project.user("u")
    for _ in range(11):
        r = await project.post(
            "/v1/usage", {"user_id": "u", "model": "m", "tokens": {"input_tokens": 1_000_000}}
        )
        assert r.status_code == 201, r.text
    assert (await balance(project, "u"))["total"] == Decimal("-10999999999989.000011")
    await assert_ledger_consistent(db)


async def test_a_completion_without_any_tokens_charges_the_request_price(project: Project) -> None:
    await project.price("_default", 1, 1, request_price=Decimal("0.5"))
    await project.user("u", credits=10)
    txn = await start(project, "u")
    done = body(await complete(project, txn["transaction_id"]))
    assert done["credits_used"] == Decimal("0.5")


@pytest.mark.parametrize(
    "raw",
    [b"1e30", b"-4E+100", b"1.7976931348623157e+308"],
    ids=["1e30", "minus-4e100", "max-double"],
)
async def test_json_numbers_that_would_come_back_as_huge_integers_are_refused(
    project: Project, raw: bytes
) -> None:
    # PostgreSQL keeps 1e30 in jsonb as a 31-digit integer that no int64 client can read back:
    # the free-form JSON rule refuses it (422) and nothing is stored. Rows stored before the
    # rule still read back exactly (tests/platform/test_free_form_json.py).
    user = b'{"id": "u", "metadata": {"n": ' + raw + b"}}"
    r = await project.post("/v1/users", content=user, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "metadata"]
    assert (await project.get("/v1/users/u")).status_code == 404
    tier = b'{"id": "t", "name": "T", "features": {"n": ' + raw + b"}}"
    r = await project.post("/v1/tiers", content=tier, headers=JSON)
    assert r.status_code == 422, r.text
    assert (await project.get("/v1/tiers/t")).status_code == 404
