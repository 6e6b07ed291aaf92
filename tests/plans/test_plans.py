"""Plans CRUD and subscriptions through the API: subscribe, list, cancel now or at period end."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from app.db.session import Database
from tests.conftest import Project
from tests.helpers import balance, body
from tests.tiers.test_tiers import make_tier


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


async def make_plan(project: Project, plan_id: str = "pro", **fields: Any) -> dict[str, Any]:
    payload = {
        "id": plan_id,
        "name": plan_id.title(),
        "price": {"amount": Decimal("9.99"), "currency": "USD"},
        "interval": "month",
        "credits_per_period": 100,
        **fields,
    }
    r = await project.post("/v1/plans", payload)
    assert r.status_code == 201, r.text
    return dict(body(r))


async def subscribe(
    project: Project, user_id: str, plan_id: str = "pro", provider: str = "manual"
) -> httpx.Response:
    return await project.post(
        f"/v1/users/{user_id}/subscriptions", {"plan_id": plan_id, "provider": provider}
    )


async def subscribed(project: Project, user_id: str, plan_id: str = "pro") -> dict[str, Any]:
    r = await subscribe(project, user_id, plan_id)
    assert r.status_code == 201, r.text
    return dict(body(r)["subscription"])


async def cancel(project: Project, sub_id: str, at_period_end: bool) -> httpx.Response:
    return await project.post(
        f"/v1/subscriptions/{sub_id}/cancel", {"at_period_end": at_period_end}
    )


async def user_tier(project: Project, user_id: str) -> str | None:
    tier: str | None = (await project.get(f"/v1/users/{user_id}")).json()["tier_id"]
    return tier


async def allocation_rows(db: Database, project: Project, user_id: str) -> list[Any]:
    async with db.transaction() as session:
        found = await session.execute(
            text(
                "SELECT source_ref, period_start, grant_id FROM allocations "
                "WHERE project_id = :p AND user_id = :u AND source = 'subscription'"
            ),
            {"p": project.id, "u": user_id},
        )
        return list(found.all())


async def event_types(project: Project, user_id: str) -> list[str]:
    r = await project.get("/v1/events", params={"user_id": user_id, "limit": 100})
    assert r.status_code == 200, r.text
    return [e["type"] for e in r.json()["data"]]


# --- plans -----------------------------------------------------------------------------------


async def test_create_plan_returns_it_with_exact_price(project: Project) -> None:
    plan = await make_plan(project, "pro", tier_id=None, stripe_price_id="price_123")
    assert plan["price"] == {"amount": Decimal("9.99"), "currency": "USD"}
    assert plan["interval"] == "month"
    assert plan["credits_per_period"] == 100
    assert plan["tier_id"] is None
    assert plan["stripe_price_id"] == "price_123"
    assert plan["razorpay_plan_id"] is None
    assert plan["active"] is True
    assert body(await project.get("/v1/plans/pro")) == plan


async def test_duplicate_plan_id_is_409_plan_exists(project: Project) -> None:
    await make_plan(project, "pro")
    r = await project.post(
        "/v1/plans",
        {"id": "pro", "name": "x", "price": {"amount": 1, "currency": "EUR"},
         "interval": "day", "credits_per_period": 1},
    )  # fmt: skip
    assert_problem(r, 409, "plan_exists")


async def test_plan_with_unknown_tier_is_404_tier_not_found(project: Project) -> None:
    r = await project.post(
        "/v1/plans",
        {"id": "p", "name": "P", "price": {"amount": 1, "currency": "USD"},
         "interval": "month", "credits_per_period": 1, "tier_id": "nope"},
    )  # fmt: skip
    assert_problem(r, 404, "tier_not_found")
    assert_problem(await project.get("/v1/plans/p"), 404, "plan_not_found")


async def test_invalid_plan_payloads_are_422(project: Project) -> None:
    good = {"id": "p", "name": "P", "price": {"amount": 1, "currency": "USD"},
            "interval": "month", "credits_per_period": 1}  # fmt: skip
    bad: list[dict[str, Any]] = [
        {**good, "price": {"amount": 1, "currency": "usd"}},
        {**good, "price": {"amount": 1, "currency": "DOLLAR"}},
        {**good, "price": {"amount": -1, "currency": "USD"}},
        {**good, "price": {"amount": Decimal("0.0000001"), "currency": "USD"}},
        {**good, "interval": "week"},
        {**good, "credits_per_period": -5},
        {**good, "id": "bad id"},
        {**good, "unknown": 1},
        {k: v for k, v in good.items() if k != "interval"},
    ]
    for payload in bad:
        assert_problem(await project.post("/v1/plans", payload), 422, "validation_error")
    assert body(await project.get("/v1/plans"))["data"] == []


async def test_list_plans_paginates_by_id(project: Project) -> None:
    for plan_id in ("c", "a", "b"):
        await make_plan(project, plan_id)
    first = body(await project.get("/v1/plans", params={"limit": 2}))
    assert [p["id"] for p in first["data"]] == ["a", "b"]
    assert first["has_more"] is True
    rest = body(await project.get("/v1/plans", params={"starting_after": first["next_cursor"]}))
    assert [p["id"] for p in rest["data"]] == ["c"]
    assert rest["has_more"] is False


async def test_patch_plan_changes_given_fields_only(project: Project) -> None:
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro")
    r = await project.patch(
        "/v1/plans/pro",
        {"name": "Pro+", "price": {"amount": 20, "currency": "EUR"}, "tier_id": "gold",
         "active": False},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    plan = body(r)
    assert plan["name"] == "Pro+"
    assert plan["price"] == {"amount": 20, "currency": "EUR"}
    assert plan["tier_id"] == "gold"
    assert plan["active"] is False
    assert plan["credits_per_period"] == 100
    cleared = body(await project.patch("/v1/plans/pro", {"tier_id": None}))
    assert cleared["tier_id"] is None


async def test_patch_plan_rejects_unknown_tier_and_interval_changes(project: Project) -> None:
    await make_plan(project, "pro")
    assert_problem(await project.patch("/v1/plans/pro", {"tier_id": "x"}), 404, "tier_not_found")
    assert_problem(
        await project.patch("/v1/plans/pro", {"interval": "day"}), 422, "validation_error"
    )
    assert_problem(await project.patch("/v1/plans/none", {"name": "x"}), 404, "plan_not_found")


async def test_delete_plan_without_subscriptions(project: Project) -> None:
    await make_plan(project, "pro")
    assert (await project.delete("/v1/plans/pro")).status_code == 204
    assert_problem(await project.get("/v1/plans/pro"), 404, "plan_not_found")
    assert_problem(await project.delete("/v1/plans/pro"), 404, "plan_not_found")


async def test_delete_plan_with_a_running_subscription_is_409_until_it_ends(
    project: Project,
) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    assert (await cancel(project, sub["id"], at_period_end=True)).status_code == 200
    assert_problem(await project.delete("/v1/plans/pro"), 409, "plan_in_use")
    assert (await cancel(project, sub["id"], at_period_end=False)).status_code == 200
    assert (await project.delete("/v1/plans/pro")).status_code == 204


async def test_tier_used_by_a_plan_cannot_be_deleted(project: Project) -> None:
    await make_tier(project, "gold")
    await make_plan(project, "pro", tier_id="gold")
    assert_problem(await project.delete("/v1/tiers/gold"), 409, "tier_in_use")


# --- subscribing -----------------------------------------------------------------------------


async def test_manual_subscription_grants_the_first_period_and_moves_the_user_to_the_tier(
    project: Project, db: Database
) -> None:
    await make_tier(project, "free", credits=10, is_default=True)
    await make_tier(project, "gold", credits=5)
    await make_plan(project, "pro", credits_per_period=100, tier_id="gold", interval="month")
    await project.user("u")
    assert (await balance(project, "u"))["total"] == 10
    r = await subscribe(project, "u")
    assert r.status_code == 201, r.text
    out = body(r)
    assert out["checkout_url"] is None
    sub = out["subscription"]
    assert sub["user_id"] == "u"
    assert sub["plan_id"] == "pro"
    assert sub["provider"] == "manual"
    assert sub["status"] == "active"
    assert sub["cancel_at_period_end"] is False
    assert sub["canceled_at"] is None
    assert sub["ended_at"] is None
    assert sub["provider_subscription_id"] is None
    start = datetime.fromisoformat(sub["current_period_start"])
    end = datetime.fromisoformat(sub["current_period_end"])
    assert timedelta(days=28) <= end - start <= timedelta(days=31)
    # 10 (free tier) + 100 (plan) + 5 (the gold tier's own allocation)
    assert (await balance(project, "u"))["total"] == 115
    assert await user_tier(project, "u") == "gold"
    rows = await allocation_rows(db, project, "u")
    assert len(rows) == 1
    assert rows[0].source_ref == sub["id"]
    assert rows[0].period_start == start
    assert rows[0].grant_id is not None
    grants = body(await project.get("/v1/users/u/grants"))["data"]
    plan_grant = next(g for g in grants if g["source"] == "subscription")
    assert plan_grant["amount"] == 100
    assert plan_grant["expires_at"] is None
    types = await event_types(project, "u")
    assert "subscription.created" in types


async def test_second_subscription_is_409_subscription_exists(project: Project) -> None:
    await make_plan(project, "pro")
    await make_plan(project, "max")
    await project.user("u")
    await subscribed(project, "u")
    assert_problem(await subscribe(project, "u", "max"), 409, "subscription_exists")
    assert (await balance(project, "u"))["total"] == 100


async def test_subscribing_again_after_the_subscription_ended_is_allowed(
    project: Project,
) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    assert (await cancel(project, sub["id"], at_period_end=False)).status_code == 200
    await subscribed(project, "u")
    subs = body(await project.get("/v1/users/u/subscriptions"))["data"]
    assert [s["status"] for s in subs] == ["canceled", "active"]


async def test_inactive_plan_cannot_be_subscribed_to(project: Project) -> None:
    await make_plan(project, "pro", active=False)
    await project.user("u")
    assert_problem(await subscribe(project, "u"), 409, "plan_inactive")


async def test_subscribe_unknown_user_plan_or_provider(project: Project) -> None:
    await make_plan(project, "pro")
    assert_problem(await subscribe(project, "ghost"), 404, "user_not_found")
    await project.user("u")
    assert_problem(await subscribe(project, "u", "nope"), 404, "plan_not_found")
    assert_problem(await subscribe(project, "u", provider="paypal"), 422, "validation_error")


async def test_plan_without_tier_leaves_the_user_on_its_tier(project: Project) -> None:
    await make_tier(project, "free", credits=1, is_default=True)
    await make_plan(project, "pro", credits_per_period=Decimal("2.5"))
    await project.user("u")
    await subscribed(project, "u")
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == Decimal("3.5")


async def test_list_subscriptions_of_a_user(project: Project) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    await project.user("v")
    sub = await subscribed(project, "u")
    page = body(await project.get("/v1/users/u/subscriptions"))
    assert [s["id"] for s in page["data"]] == [sub["id"]]
    assert page["has_more"] is False
    assert body(await project.get("/v1/users/v/subscriptions"))["data"] == []
    assert_problem(await project.get("/v1/users/ghost/subscriptions"), 404, "user_not_found")
    assert body(await project.get(f"/v1/subscriptions/{sub['id']}")) == sub


# --- canceling -------------------------------------------------------------------------------


async def test_cancel_now_ends_it_keeps_credits_and_restores_the_previous_tier(
    project: Project,
) -> None:
    await make_tier(project, "basic", credits=0)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold")
    r = await project.post("/v1/users", {"id": "u", "tier_id": "basic"})
    assert r.status_code == 201
    sub = await subscribed(project, "u")
    assert await user_tier(project, "u") == "gold"
    r = await cancel(project, sub["id"], at_period_end=False)
    assert r.status_code == 200, r.text
    out = body(r)
    assert out["status"] == "canceled"
    assert out["ended_at"] is not None
    assert out["canceled_at"] is not None
    assert await user_tier(project, "u") == "basic"
    assert (await balance(project, "u"))["total"] == 100
    assert "subscription.canceled" in await event_types(project, "u")


async def test_cancel_now_without_previous_tier_goes_to_the_default_tier_or_none(
    project: Project,
) -> None:
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold")
    await project.user("u")  # no default tier yet: no tier
    await project.user("v")
    sub_u = await subscribed(project, "u")
    sub_v = await subscribed(project, "v")
    assert (await cancel(project, sub_u["id"], at_period_end=False)).status_code == 200
    assert await user_tier(project, "u") is None
    await make_tier(project, "free", credits=0, is_default=True)
    assert (await cancel(project, sub_v["id"], at_period_end=False)).status_code == 200
    assert await user_tier(project, "v") == "free"


async def test_cancel_leaves_a_tier_changed_meanwhile_alone(project: Project) -> None:
    await make_tier(project, "gold", credits=0)
    await make_tier(project, "team", credits=0)
    await make_plan(project, "pro", tier_id="gold")
    await project.user("u")
    sub = await subscribed(project, "u")
    r = await project.post("/v1/users/u/tier", {"tier_id": "team"})
    assert r.status_code == 200
    await cancel(project, sub["id"], at_period_end=False)
    assert await user_tier(project, "u") == "team"


async def test_cancel_at_period_end_keeps_it_active_until_then(project: Project) -> None:
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold")
    await project.user("u")
    sub = await subscribed(project, "u")
    r = await project.post(f"/v1/subscriptions/{sub['id']}/cancel")  # default: at period end
    assert r.status_code == 200, r.text
    out = body(r)
    assert out["status"] == "active"
    assert out["cancel_at_period_end"] is True
    assert out["canceled_at"] is not None
    assert out["ended_at"] is None
    assert out["current_period_end"] == sub["current_period_end"]
    assert await user_tier(project, "u") == "gold"
    # Still the one running subscription.
    await make_plan(project, "max")
    assert_problem(await subscribe(project, "u", "max"), 409, "subscription_exists")


async def test_cancel_an_ended_subscription_returns_it_unchanged(project: Project) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    first = body(await cancel(project, sub["id"], at_period_end=False))
    again = await cancel(project, sub["id"], at_period_end=True)
    assert again.status_code == 200
    assert body(again) == first


async def test_cancel_unknown_subscription_is_404(project: Project) -> None:
    for sub_id in ("00000000-0000-7000-8000-000000000000", "not-a-uuid"):
        assert_problem(await cancel(project, sub_id, True), 404, "subscription_not_found")
        assert_problem(await project.get(f"/v1/subscriptions/{sub_id}"), 404,
                       "subscription_not_found")  # fmt: skip


# --- scopes and tenants ----------------------------------------------------------------------


async def _key(p: Project, scopes: list[str]) -> Project:
    r = await p.post("/v1/api-keys", {"name": "k", "scopes": scopes})
    assert r.status_code == 201, r.text
    return Project(id=p.id, key=r.json()["key"], client=p.client)


async def test_read_key_reads_but_cannot_write(project: Project) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    reader = await _key(project, ["read"])
    assert (await reader.get("/v1/plans")).status_code == 200
    assert (await reader.get("/v1/plans/pro")).status_code == 200
    assert (await reader.get("/v1/users/u/subscriptions")).status_code == 200
    assert (await reader.get(f"/v1/subscriptions/{sub['id']}")).status_code == 200
    assert_problem(await reader.patch("/v1/plans/pro", {"name": "x"}), 403, "insufficient_scope")
    assert_problem(await reader.delete("/v1/plans/pro"), 403, "insufficient_scope")
    assert_problem(await subscribe(reader, "u"), 403, "insufficient_scope")
    assert_problem(await cancel(reader, sub["id"], False), 403, "insufficient_scope")
    usage = await _key(project, ["usage"])
    assert_problem(await usage.get("/v1/plans"), 403, "insufficient_scope")


async def test_another_projects_plans_and_subscriptions_are_404(
    project: Project, other_project: Project
) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    b = other_project
    await b.user("u")
    assert_problem(await b.get("/v1/plans/pro"), 404, "plan_not_found")
    assert_problem(await b.patch("/v1/plans/pro", {"name": "x"}), 404, "plan_not_found")
    assert_problem(await b.delete("/v1/plans/pro"), 404, "plan_not_found")
    assert_problem(await subscribe(b, "u"), 404, "plan_not_found")
    assert_problem(await b.get(f"/v1/subscriptions/{sub['id']}"), 404, "subscription_not_found")
    assert_problem(await cancel(b, sub["id"], False), 404, "subscription_not_found")
    assert body(await b.get("/v1/plans"))["data"] == []
    assert body(await b.get("/v1/users/u/subscriptions"))["data"] == []
    assert body(await project.get(f"/v1/subscriptions/{sub['id']}"))["status"] == "active"
