"""Promo codes: CRUD, validation, eligibility in its documented order, claims, isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import Project
from tests.helpers import balance, body

PROBLEM_JSON = "application/problem+json"


def iso(when: datetime) -> str:
    return when.isoformat()


def in_days(days: float) -> str:
    return iso(datetime.now(UTC) + timedelta(days=days))


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    problem = r.json()
    assert problem["code"] == code
    assert problem["type"] == f"/errors/{code}"
    assert problem["status"] == status


async def make_promo(p: Project, code: str = "SAVE10", **fields: Any) -> dict[str, Any]:
    r = await p.post("/v1/promos", {"code": code, "credits": 10, **fields})
    assert r.status_code == 201, r.text
    return dict(body(r))


async def reason(p: Project, code: str, user_id: str) -> str | None:
    r = await p.get(f"/v1/promos/{code}/eligibility", params={"user_id": user_id})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["eligible"] is (result["reason"] is None)
    return result["reason"]  # type: ignore[no-any-return]


async def claim(p: Project, code: str, user_id: str, **kw: Any) -> httpx.Response:
    return await p.post(f"/v1/promos/{code}/claim", {"user_id": user_id}, **kw)


async def count_of(p: Project, code: str) -> int:
    r = await p.get(f"/v1/promos/{code}")
    assert r.status_code == 200, r.text
    return int(r.json()["redemptions_count"])


# --- CRUD -------------------------------------------------------------------------------


async def test_create_promo_returns_all_fields_with_defaults_and_lower_case_code(
    project: Project,
) -> None:
    r = await project.post("/v1/promos", {"code": "SAVE10", "credits": Decimal("10.5")})
    assert r.status_code == 201, r.text
    promo = body(r)
    created = promo.pop("created_at")
    assert promo.pop("updated_at") == created
    assert promo == {
        "code": "save10",
        "credits": Decimal("10.5"),
        "description": None,
        "max_redemptions": None,
        "max_per_user": 1,
        "starts_at": None,
        "expires_at": None,
        "eligible_tier_ids": None,
        "eligible_user_ids": None,
        "new_users_only": False,
        "credit_expires_in_days": None,
        "active": True,
        "redemptions_count": 0,
    }


async def test_create_promo_stores_every_field(project: Project) -> None:
    fields = {
        "description": "launch",
        "max_redemptions": 100,
        "max_per_user": 2,
        "starts_at": "2030-01-01T00:00:00Z",
        "expires_at": "2030-02-01T00:00:00Z",
        "eligible_tier_ids": ["pro"],
        "eligible_user_ids": ["u_1", "u_2"],
        "new_users_only": True,
        "credit_expires_in_days": 30,
        "active": False,
    }
    promo = await make_promo(project, "LAUNCH", **fields)
    assert {k: promo[k] for k in fields} == fields
    assert body(await project.get("/v1/promos/launch")) == promo


async def test_promo_codes_are_case_insensitive_on_every_route(project: Project) -> None:
    await make_promo(project, "SAVE10")
    assert (await project.get("/v1/promos/save10")).json()["code"] == "save10"
    assert (await project.get("/v1/promos/Save10")).status_code == 200
    assert (await project.patch("/v1/promos/sAvE10", {"description": "x"})).status_code == 200
    assert await reason(project, "SAVE10", "u_1") is None
    assert (await claim(project, "save10", "u_1")).status_code == 201
    redemptions = body(await project.get("/v1/promos/SAVE10/redemptions"))["data"]
    assert [r["user_id"] for r in redemptions] == ["u_1"]


async def test_duplicate_code_in_another_case_is_409_promo_exists(project: Project) -> None:
    await make_promo(project, "SAVE10")
    assert_problem(
        await project.post("/v1/promos", {"code": "save10", "credits": 1}), 409, "promo_exists"
    )


async def test_list_promos_paginates_by_code_and_hides_deleted(project: Project) -> None:
    for code in ("c", "A", "b", "d"):
        await make_promo(project, code)
    assert (await project.delete("/v1/promos/d")).status_code == 204
    page = body(await project.get("/v1/promos", params={"limit": 2}))
    assert [p["code"] for p in page["data"]] == ["a", "b"]
    assert page["has_more"] is True
    assert page["next_cursor"] == "b"
    rest = body(await project.get("/v1/promos", params={"starting_after": "b"}))
    assert [p["code"] for p in rest["data"]] == ["c"]
    assert rest["has_more"] is False
    assert rest["next_cursor"] is None


async def test_patch_changes_only_the_fields_sent_and_null_clears(project: Project) -> None:
    before = await make_promo(project, "P", description="old", max_redemptions=5)
    r = await project.patch(
        "/v1/promos/p",
        {"description": None, "max_per_user": 3, "credit_expires_in_days": 7, "active": False},
    )
    assert r.status_code == 200, r.text
    after = body(r)
    assert after["description"] is None
    assert after["max_per_user"] == 3
    assert after["credit_expires_in_days"] == 7
    assert after["active"] is False
    assert after["max_redemptions"] == 5
    assert after["credits"] == before["credits"]
    assert after["updated_at"] > before["updated_at"]


@pytest.mark.parametrize("field", ["code", "credits", "redemptions_count"])
async def test_patch_of_an_immutable_field_is_422(project: Project, field: str) -> None:
    await make_promo(project, "P")
    value: Any = "other" if field == "code" else 5
    assert_problem(await project.patch("/v1/promos/p", {field: value}), 422, "validation_error")


@pytest.mark.parametrize("field", ["max_per_user", "new_users_only", "active"])
async def test_patch_setting_a_required_field_to_null_is_422(project: Project, field: str) -> None:
    await make_promo(project, "P")
    assert_problem(await project.patch("/v1/promos/p", {field: None}), 422, "validation_error")


async def test_patch_max_redemptions_below_the_count_is_409(project: Project) -> None:
    await make_promo(project, "P")
    for user in ("u_1", "u_2"):
        assert (await claim(project, "p", user)).status_code == 201
    assert_problem(
        await project.patch("/v1/promos/p", {"max_redemptions": 1}),
        409,
        "max_redemptions_below_count",
    )
    r = await project.patch("/v1/promos/p", {"max_redemptions": 2})
    assert r.status_code == 200, r.text
    assert r.json()["max_redemptions"] == 2


async def test_patch_expires_at_not_after_the_stored_starts_at_is_422(project: Project) -> None:
    await make_promo(project, "P", starts_at="2030-01-01T00:00:00Z")
    r = await project.patch("/v1/promos/p", {"expires_at": "2030-01-01T00:00:00Z"})
    assert_problem(r, 422, "validation_error")
    assert r.json()["errors"][0]["loc"] == ["body", "expires_at"]


async def test_deleted_promo_is_404_everywhere_and_its_code_stays_reserved(
    project: Project,
) -> None:
    await make_promo(project, "GONE")
    assert (await project.delete("/v1/promos/Gone")).status_code == 204
    assert_problem(await project.get("/v1/promos/gone"), 404, "promo_not_found")
    assert_problem(await project.patch("/v1/promos/gone", {"active": True}), 404, "promo_not_found")
    assert_problem(await project.delete("/v1/promos/gone"), 404, "promo_not_found")
    assert_problem(await claim(project, "gone", "u_1"), 404, "promo_not_found")
    assert_problem(await project.get("/v1/promos/gone/redemptions"), 404, "promo_not_found")
    assert await reason(project, "gone", "u_1") == "promo_not_found"
    assert_problem(
        await project.post("/v1/promos", {"code": "GONE", "credits": 1}), 409, "promo_exists"
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"code": "", "credits": 1},
        {"code": "x" * 65, "credits": 1},
        {"code": "has space", "credits": 1},
        {"code": "émoji", "credits": 1},
        {"code": "a/b", "credits": 1},
        {"code": "ok", "credits": 0},
        {"code": "ok", "credits": -1},
        {"code": "ok", "credits": Decimal("0.0000001")},
        {"code": "ok"},
        {"code": "ok", "credits": 1, "max_redemptions": 0},
        {"code": "ok", "credits": 1, "max_per_user": 0},
        {"code": "ok", "credits": 1, "credit_expires_in_days": 0},
        {"code": "ok", "credits": 1, "credit_expires_in_days": 3651},
        {"code": "ok", "credits": 1, "starts_at": "2030-01-02T00:00:00Z",
         "expires_at": "2030-01-01T00:00:00Z"},
        {"code": "ok", "credits": 1, "starts_at": "2030-01-01T00:00:00Z",
         "expires_at": "2030-01-01T00:00:00Z"},
        {"code": "ok", "credits": 1, "starts_at": "2030-01-01T00:00:00"},
        {"code": "ok", "credits": 1, "eligible_user_ids": ["has space"]},
        {"code": "ok", "credits": 1, "redemptions_count": 3},
    ],
)  # fmt: skip
async def test_invalid_promo_payload_is_422(project: Project, payload: dict[str, Any]) -> None:
    assert_problem(await project.post("/v1/promos", payload), 422, "validation_error")
    assert body(await project.get("/v1/promos"))["data"] == []


async def test_boundary_values_are_accepted(project: Project) -> None:
    promo = await make_promo(
        project, "x" * 64, credits=Decimal("0.000001"), credit_expires_in_days=3650
    )
    assert promo["code"] == "x" * 64
    assert promo["credits"] == Decimal("0.000001")


async def test_empty_eligibility_lists_mean_no_restriction(project: Project) -> None:
    promo = await make_promo(project, "P", eligible_user_ids=[], eligible_tier_ids=[])
    assert promo["eligible_user_ids"] is None
    assert promo["eligible_tier_ids"] is None
    assert await reason(project, "p", "anyone") is None


# --- eligibility, in the documented order -----------------------------------------------


async def test_eligibility_of_unknown_code_is_promo_not_found(project: Project) -> None:
    assert await reason(project, "nope", "u_1") == "promo_not_found"
    assert await reason(project, "not a code!", "u_1") == "promo_not_found"


async def test_eligibility_of_inactive_promo_is_promo_inactive(project: Project) -> None:
    await make_promo(project, "P", active=False)
    assert await reason(project, "p", "u_1") == "promo_inactive"


async def test_eligibility_before_starts_at_is_promo_not_started(project: Project) -> None:
    await make_promo(project, "P", starts_at=in_days(1))
    assert await reason(project, "p", "u_1") == "promo_not_started"


async def test_eligibility_at_or_after_expires_at_is_promo_expired(project: Project) -> None:
    await make_promo(project, "P", starts_at=in_days(-2), expires_at=in_days(-1))
    assert await reason(project, "p", "u_1") == "promo_expired"


async def test_eligibility_once_max_redemptions_reached_is_promo_exhausted(
    project: Project,
) -> None:
    await make_promo(project, "P", max_redemptions=1)
    assert (await claim(project, "p", "u_1")).status_code == 201
    assert await reason(project, "p", "u_2") == "promo_exhausted"


async def test_eligibility_after_max_per_user_claims_is_already_claimed(project: Project) -> None:
    await make_promo(project, "P", max_per_user=2)
    for _ in range(2):
        assert await reason(project, "p", "u_1") is None
        assert (await claim(project, "p", "u_1")).status_code == 201
    assert await reason(project, "p", "u_1") == "already_claimed"
    assert await reason(project, "p", "u_2") is None


async def test_user_outside_eligible_user_ids_is_not_eligible(project: Project) -> None:
    await make_promo(project, "P", eligible_user_ids=["u_vip"])
    assert await reason(project, "p", "u_1") == "not_eligible"
    assert await reason(project, "p", "u_vip") is None


async def test_user_outside_eligible_tier_ids_is_not_eligible(project: Project) -> None:
    r = await project.post("/v1/tiers", {"id": "pro", "name": "Pro"})
    assert r.status_code == 201, r.text
    await project.user("u_free")
    assert (await project.post("/v1/users", {"id": "u_pro", "tier_id": "pro"})).status_code == 201
    await make_promo(project, "P", eligible_tier_ids=["pro"])
    assert await reason(project, "p", "u_free") == "not_eligible"
    assert await reason(project, "p", "u_unknown") == "not_eligible"
    assert await reason(project, "p", "u_pro") is None


async def test_new_users_only_refuses_users_created_before_the_promo(project: Project) -> None:
    await project.user("u_old")
    await make_promo(project, "P", new_users_only=True)
    await project.user("u_new")
    assert await reason(project, "p", "u_old") == "not_eligible"
    assert await reason(project, "p", "u_new") is None


async def test_unknown_user_counts_as_new_and_is_not_created(project: Project) -> None:
    await make_promo(project, "P", new_users_only=True)
    assert await reason(project, "p", "u_ghost") is None
    assert (await project.get("/v1/users/u_ghost")).status_code == 404


async def test_eligibility_reports_the_first_failing_check_in_the_documented_order(
    project: Project,
) -> None:
    """One promo failing every check; lifting them one by one reveals the next, in order.

    At every step a claim answers the same reason (and changes nothing)."""
    await make_promo(project, "ORDER", max_redemptions=1)
    assert (await claim(project, "order", "u_1")).status_code == 201  # exhausted + claimed
    r = await project.patch(
        "/v1/promos/order",
        {"active": False, "starts_at": in_days(1), "eligible_user_ids": ["u_other"]},
    )
    assert r.status_code == 200, r.text
    steps: list[tuple[str, dict[str, Any]]] = [
        ("promo_inactive", {"active": True}),
        ("promo_not_started", {"starts_at": in_days(-2), "expires_at": in_days(-1)}),
        ("promo_expired", {"starts_at": None, "expires_at": None}),
        ("promo_exhausted", {"max_redemptions": None}),
        ("already_claimed", {"max_per_user": 2}),
        ("not_eligible", {"eligible_user_ids": None}),
    ]
    for expected, lift in steps:
        assert await reason(project, "order", "u_1") == expected
        assert_problem(await claim(project, "order", "u_1"), 409, expected)
        r = await project.patch("/v1/promos/order", lift)
        assert r.status_code == 200, r.text
    assert await reason(project, "order", "u_1") is None
    assert await count_of(project, "order") == 1


async def test_eligibility_without_user_id_is_422(project: Project) -> None:
    await make_promo(project, "P")
    assert_problem(await project.get("/v1/promos/p/eligibility"), 422, "validation_error")


# --- claims -----------------------------------------------------------------------------


async def test_claim_grants_the_credits_and_returns_the_balance(project: Project) -> None:
    await project.user("u_1", credits=5)
    await make_promo(project, "SAVE10", credits=Decimal("10.25"))
    r = await claim(project, "SAVE10", "u_1")
    assert r.status_code == 201, r.text
    result = body(r)
    assert result["balance"] == Decimal("15.25")
    grant = result["grant"]
    assert set(grant) == {"id", "amount", "remaining", "source", "reason", "expires_at",
                          "created_at", "category", "payment_id", "cost_basis",
                          "cost_currency"}  # fmt: skip
    assert grant["category"] == "promotional"
    assert grant["payment_id"] is grant["cost_basis"] is grant["cost_currency"] is None
    assert grant["amount"] == grant["remaining"] == Decimal("10.25")
    assert grant["source"] == "promo"
    assert grant["reason"] == "promo save10"
    assert grant["expires_at"] is None
    grants = body(await project.get("/v1/users/u_1/grants"))["data"]
    assert grant in [{k: g[k] for k in grant} for g in grants]
    assert (await balance(project, "u_1"))["available"] == Decimal("15.25")
    assert await count_of(project, "save10") == 1


async def test_claim_with_credit_expires_in_days_sets_the_grant_expiry(project: Project) -> None:
    await make_promo(project, "P", credit_expires_in_days=30)
    before = datetime.now(UTC)
    r = await claim(project, "p", "u_1")
    after = datetime.now(UTC)
    assert r.status_code == 201, r.text
    expires_at = datetime.fromisoformat(r.json()["grant"]["expires_at"])
    assert before + timedelta(days=30) <= expires_at <= after + timedelta(days=30)


async def test_ineligible_claim_is_409_and_changes_nothing(project: Project) -> None:
    await project.user("u_1", credits=5)
    await make_promo(project, "P", eligible_user_ids=["u_vip"])
    r = await claim(project, "p", "u_1")
    assert_problem(r, 409, "not_eligible")
    assert await balance(project, "u_1") == {"available": 5, "held": 0, "total": 5}
    assert await count_of(project, "p") == 0
    assert body(await project.get("/v1/promos/p/redemptions"))["data"] == []
    grants = body(await project.get("/v1/users/u_1/grants"))["data"]
    assert [g["source"] for g in grants] == ["adjustment"]


async def test_ineligible_claim_for_unknown_user_does_not_create_it(project: Project) -> None:
    await make_promo(project, "P", eligible_user_ids=["u_vip"])
    assert_problem(await claim(project, "p", "u_ghost"), 409, "not_eligible")
    assert (await project.get("/v1/users/u_ghost")).status_code == 404


async def test_claim_of_unknown_code_is_404_promo_not_found(project: Project) -> None:
    assert_problem(await claim(project, "nope", "u_1"), 404, "promo_not_found")


async def test_claims_of_a_missing_or_closed_promo_create_nobody(project: Project) -> None:
    await make_promo(project, "OFF", active=False)
    assert_problem(await claim(project, "nope", "u_ghost"), 404, "promo_not_found")
    assert_problem(await claim(project, "off", "u_ghost"), 409, "promo_inactive")
    assert (await project.get("/v1/users/u_ghost")).status_code == 404


async def test_claim_creates_an_unknown_user_when_the_project_auto_creates(
    project: Project,
) -> None:
    await make_promo(project, "P")
    assert (await claim(project, "p", "u_new")).status_code == 201
    assert (await balance(project, "u_new"))["available"] == 10


async def test_claim_for_unknown_user_without_auto_create_is_404_user_not_found(
    project: Project,
) -> None:
    r = await project.patch("/v1/project", {"settings": {"auto_create_users": False}})
    assert r.status_code == 200, r.text
    await make_promo(project, "P")
    assert_problem(await claim(project, "p", "u_new"), 404, "user_not_found")
    assert await count_of(project, "p") == 0


async def test_claim_records_a_promo_claimed_event(project: Project) -> None:
    await make_promo(project, "P")
    grant = body(await claim(project, "P", "u_1"))["grant"]
    r = await project.get("/v1/events", params={"type": "promo.claimed"})
    assert r.status_code == 200, r.text
    [event] = body(r)["data"]
    assert event["user_id"] == "u_1"
    data = event["data"]
    assert (data["code"], data["grant_id"], data["amount"], data["balance"]) == (
        "p",
        grant["id"],
        10,
        10,
    )


async def test_claim_with_idempotency_key_replays_without_a_second_grant(
    project: Project,
) -> None:
    await make_promo(project, "P", max_per_user=5)
    headers = {"Idempotency-Key": "claim-1"}
    first = await claim(project, "p", "u_1", headers=headers)
    again = await claim(project, "p", "u_1", headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await count_of(project, "p") == 1


async def test_claim_with_malformed_body_is_422(project: Project) -> None:
    await make_promo(project, "P")
    assert_problem(await project.post("/v1/promos/p/claim", {}), 422, "validation_error")
    assert_problem(
        await project.post("/v1/promos/p/claim", {"user_id": "a b"}), 422, "validation_error"
    )


async def test_redemptions_are_listed_oldest_first_with_pagination(project: Project) -> None:
    await make_promo(project, "P")
    grants = [body(await claim(project, "p", u))["grant"]["id"] for u in ("u_1", "u_2", "u_3")]
    page = body(await project.get("/v1/promos/p/redemptions", params={"limit": 2}))
    assert [(r["user_id"], r["grant_id"]) for r in page["data"]] == [
        ("u_1", grants[0]),
        ("u_2", grants[1]),
    ]
    assert set(page["data"][0]) == {"id", "user_id", "grant_id", "created_at"}
    assert page["has_more"] is True
    rest = body(
        await project.get(
            "/v1/promos/p/redemptions", params={"starting_after": page["next_cursor"]}
        )
    )
    assert [r["user_id"] for r in rest["data"]] == ["u_3"]
    assert rest["has_more"] is False


async def test_redemptions_with_malformed_cursor_is_422(project: Project) -> None:
    await make_promo(project, "P")
    r = await project.get("/v1/promos/p/redemptions", params={"starting_after": "nope"})
    assert_problem(r, 422, "validation_error")


# --- scopes and tenants -----------------------------------------------------------------


async def _key(p: Project, scopes: list[str]) -> Project:
    r = await p.post("/v1/api-keys", {"name": "k", "scopes": scopes})
    assert r.status_code == 201, r.text
    return Project(id=p.id, key=r.json()["key"], client=p.client)


async def test_read_key_can_read_promos_but_not_change_or_claim_them(project: Project) -> None:
    await make_promo(project, "P")
    reader = await _key(project, ["read"])
    assert (await reader.get("/v1/promos")).status_code == 200
    assert (await reader.get("/v1/promos/p")).status_code == 200
    assert await reason(reader, "p", "u_1") is None
    assert (await reader.get("/v1/promos/p/redemptions")).status_code == 200
    assert_problem(await reader.post("/v1/promos", {"code": "q", "credits": 1}), 403,
                   "insufficient_scope")  # fmt: skip
    assert_problem(await reader.patch("/v1/promos/p", {"active": False}), 403,
                   "insufficient_scope")  # fmt: skip
    assert_problem(await reader.delete("/v1/promos/p"), 403, "insufficient_scope")
    assert_problem(await claim(reader, "p", "u_1"), 403, "insufficient_scope")
    assert await count_of(project, "p") == 0


async def test_usage_key_cannot_claim_promos(project: Project) -> None:
    await make_promo(project, "P")
    usage = await _key(project, ["usage"])
    assert_problem(await claim(usage, "p", "u_1"), 403, "insufficient_scope")


async def test_another_projects_promo_is_404_on_every_route(
    project: Project, other_project: Project
) -> None:
    await make_promo(project, "MINE")
    assert (await claim(project, "mine", "u_1")).status_code == 201
    b = other_project
    assert_problem(await b.get("/v1/promos/mine"), 404, "promo_not_found")
    assert_problem(await b.patch("/v1/promos/mine", {"active": False}), 404, "promo_not_found")
    assert_problem(await b.delete("/v1/promos/mine"), 404, "promo_not_found")
    assert_problem(await claim(b, "mine", "u_1"), 404, "promo_not_found")
    assert_problem(await b.get("/v1/promos/mine/redemptions"), 404, "promo_not_found")
    # Eligibility always answers 200: indistinguishable from a code that does not exist.
    assert await reason(b, "mine", "u_1") == "promo_not_found"
    assert body(await b.get("/v1/promos"))["data"] == []
    # Nothing leaked or changed in project A.
    promo = body(await project.get("/v1/promos/mine"))
    assert promo["active"] is True
    assert promo["redemptions_count"] == 1


async def test_the_same_code_can_exist_in_two_projects(
    project: Project, other_project: Project
) -> None:
    await make_promo(project, "SAME", credits=1)
    await make_promo(other_project, "SAME", credits=2)
    assert body(await claim(other_project, "same", "u_1"))["balance"] == 2
    assert await count_of(project, "same") == 0
