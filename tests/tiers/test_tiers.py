"""Tiers: allocation, overage floor, pricing, concurrency, features; the issue's worked examples."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, complete, ledger, start


async def make_tier(project: Project, tier_id: str, **fields: Any) -> dict[str, Any]:
    r = await project.post("/v1/tiers", {"id": tier_id, "name": tier_id.title(), **fields})
    assert r.status_code == 201, r.text
    return dict(body(r))


async def price_sizes(project: Project) -> None:
    """small 0.1, medium 1, large 5 credits per (input) token."""
    await project.price("small", 100, 0)
    await project.price("medium", 1000, 0)
    await project.price("large", 5000, 0)


async def use(project: Project, user: str, model: str, tokens: int) -> dict[str, Any]:
    r = await project.post(
        "/v1/transactions/start",
        {"user_id": user, "model": model, "provisional_tokens": {"input_tokens": tokens}},
    )
    assert r.status_code == 201, r.text
    started = body(r)
    if started["continue"]:
        done = await complete(project, started["transaction_id"], inp=tokens)
        assert done.status_code == 200, done.text
    return dict(started)


async def test_free_tier_worked_example_spends_to_zero_then_denies(
    project: Project, db: Database
) -> None:
    await price_sizes(project)
    await make_tier(project, "free", credits=500, refill_interval="month", is_default=True)
    await project.user("u")
    assert (await balance(project, "u"))["available"] == 500
    await use(project, "u", "small", 2000)
    await use(project, "u", "large", 60)
    assert (await balance(project, "u"))["available"] == 0
    nxt = await use(project, "u", "small", 1)
    assert nxt["continue"] is False
    assert nxt["reason"] == "insufficient_credits"
    await assert_ledger_consistent(db)


async def test_pro_tier_worked_example_overage_without_limit(
    project: Project, db: Database
) -> None:
    await price_sizes(project)
    await make_tier(project, "pro", credits=10_000, refill_interval="month", allow_overage=True)
    await project.post("/v1/users", {"id": "u", "tier_id": "pro"})
    for model, tokens in (("small", 50_000), ("medium", 10_000), ("large", 1_000)):
        started = await use(project, "u", model, tokens)
        assert started["continue"] is True
    assert await balance(project, "u") == {
        "available": Decimal(-10_000),
        "held": 0,
        "total": Decimal(-10_000),
    }
    assert (await use(project, "u", "large", 100_000))["continue"] is True
    await assert_ledger_consistent(db)


async def test_overage_limit_is_the_floor_of_admission(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await make_tier(project, "t", credits=10, allow_overage=True, overage_limit=5)
    await project.post("/v1/users", {"id": "u", "tier_id": "t"})
    assert (await use(project, "u", "m", 15))["continue"] is True  # 10 - 15 = -5 >= -5
    denied = await use(project, "u", "m", 1)
    assert denied["continue"] is False
    assert (await balance(project, "u"))["available"] == -5


async def test_price_multiplier_and_model_overrides_apply_to_charges(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await make_tier(
        project,
        "t",
        price_multiplier=2,
        model_overrides={
            "cheap": {"price_multiplier": Decimal("0.5")},
            "special": {"input_price_per_1k": 10, "output_price_per_1k": 0},
        },
    )
    await project.post("/v1/users", {"id": "u", "tier_id": "t"})
    await project.grant("u", 1000)
    assert (await use(project, "u", "other", 10))["hold_amount"] == 20
    assert (await use(project, "u", "cheap", 10))["hold_amount"] == 5
    assert (await use(project, "u", "special", 100))["hold_amount"] == 2  # 100 x 0.01 x 2
    assert (await balance(project, "u"))["total"] == 1000 - 27


async def test_concurrency_limit_denies_starts_beyond_it(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await make_tier(project, "t", credits=100, max_concurrent_transactions=2)
    await project.post("/v1/users", {"id": "u", "tier_id": "t"})
    first = await start(project, "u", inp=1)
    await start(project, "u", inp=1)
    third = await start(project, "u", inp=1)
    assert third["continue"] is False
    assert third["reason"] == "concurrency_limit"
    await complete(project, first["transaction_id"], inp=1)
    assert (await start(project, "u", inp=1))["continue"] is True


async def test_user_shows_its_tier_features(project: Project) -> None:
    await make_tier(project, "t", features={"gpt4": True, "seats": 3})
    r = await project.post("/v1/users", {"id": "u", "tier_id": "t"})
    assert body(r)["features"] == {"gpt4": True, "seats": 3}
    assert body(r)["tier_id"] == "t"


async def test_new_users_get_the_default_tier_also_when_auto_created(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await make_tier(project, "free", credits=7, is_default=True)
    await start(project, "auto", inp=1)
    user = body(await project.get("/v1/users/auto"))
    assert user["tier_id"] == "free"
    assert user["balance"]["total"] == 7


async def test_only_one_tier_is_default(project: Project) -> None:
    await make_tier(project, "a", is_default=True)
    await make_tier(project, "b", is_default=True)
    tiers = {t["id"]: t["is_default"] for t in body(await project.get("/v1/tiers"))["data"]}
    assert tiers == {"a": False, "b": True}


async def test_tier_crud_and_conflicts(project: Project) -> None:
    await make_tier(project, "t", credits=5)
    assert (await project.post("/v1/tiers", {"id": "t", "name": "T"})).status_code == 409
    r = await project.patch("/v1/tiers/t", {"credits": 9, "refill_interval": "week"})
    assert body(r)["credits"] == 9
    assert body(r)["refill_interval"] == "week"
    bad = await project.patch("/v1/tiers/t", {"refill_mode": "rollover", "rollover_cap": 1})
    assert bad.status_code == 422
    await project.post("/v1/users", {"id": "u", "tier_id": "t"})
    in_use = await project.delete("/v1/tiers/t")
    assert in_use.status_code == 409
    assert in_use.json()["code"] == "tier_in_use"
    await make_tier(project, "unused")
    assert (await project.delete("/v1/tiers/unused")).status_code == 204
    assert (await project.get("/v1/tiers/unused")).status_code == 404
    unknown = await project.post("/v1/users", {"id": "v", "tier_id": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "tier_not_found"


async def test_moving_tier_with_reset_balance_removes_only_the_old_allocation(
    project: Project, db: Database
) -> None:
    await make_tier(project, "free", credits=100)
    await make_tier(project, "pro", credits=1000)
    await project.post("/v1/users", {"id": "u", "tier_id": "free"})
    await project.grant("u", 50, source="purchase")
    r = await project.post("/v1/users/u/tier", {"tier_id": "pro", "reset_balance": True})
    assert r.status_code == 200
    assert body(r)["tier_id"] == "pro"
    assert body(r)["balance"]["total"] == 1050
    kinds = [e["kind"] for e in await ledger(project, "u")]
    assert kinds == ["grant", "grant", "tier_reset", "grant"]
    kept = await project.post("/v1/users/u/tier", {"tier_id": "free"})
    assert body(kept)["balance"]["total"] == 1150
    await assert_ledger_consistent(db)
