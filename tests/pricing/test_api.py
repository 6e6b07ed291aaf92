# ruff: noqa: E501 - tables of pricing cases read best one case a line
"""Expression prices, jobs, the price snapshot and /v1/pricing/evaluate, through the API."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from app.db.session import Database
from tests.conftest import Project
from tests.helpers import body
from tests.pricing.test_expressions import DUCTO_REFUSED

GPT4 = "input_tokens * 0.01 + output_tokens * 0.03"


async def user(project: Project, user_id: str, credits: Any, tier_id: str | None = None) -> None:
    r = await project.post("/v1/users", {"id": user_id, "tier_id": tier_id})
    assert r.status_code == 201, r.text
    await project.grant(user_id, credits)


async def put_expr(project: Project, model: str, expression: str) -> Any:
    r = await project.put(f"/v1/models/{model}", {"expression": expression})
    assert r.status_code == 200, r.text
    return body(r)


async def usage(project: Project, user: str, model: str, **tokens: Any) -> Decimal:
    r = await project.post("/v1/usage", {"user_id": user, "model": model, "tokens": tokens})
    assert r.status_code == 201, r.text
    return Decimal(str(body(r)["credits_used"]))


async def test_put_expression_shows_it_and_null_per_1k_prices(project: Project) -> None:
    out = await put_expr(project, "gpt-4", GPT4)
    assert out["expression"] == GPT4
    assert out["input_price_per_1k"] is None
    assert out["output_price_per_1k"] is None
    got = body(await project.get("/v1/models/gpt-4"))
    assert got["expression"] == GPT4


async def test_per_1k_model_shows_null_expression(project: Project) -> None:
    await project.price("m", 1, 2)
    assert body(await project.get("/v1/models/m"))["expression"] is None


@pytest.mark.parametrize(
    "payload",
    [
        {"expression": GPT4, "input_price_per_1k": 1, "output_price_per_1k": 1},
        {"expression": GPT4, "request_price": 1},
        {},
        {"input_price_per_1k": 1},
    ],
    ids=["both", "expression_and_request_price", "neither", "half_per_1k"],
)
async def test_exactly_one_price_form(project: Project, payload: dict[str, Any]) -> None:
    r = await project.put("/v1/models/m", payload)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"


async def test_invalid_expression_is_422_with_line_column_and_reason(project: Project) -> None:
    r = await project.put("/v1/models/m", {"expression": "input_tokens * 2 + foo"})
    assert r.status_code == 422
    problem = r.json()
    assert problem["code"] == "validation_error"
    (error,) = problem["errors"]
    assert error["loc"] == ["body", "expression"]
    assert error["type"] == "expression_invalid"
    assert "unknown name 'foo'" in error["msg"]
    assert "line 1, column 20" in error["msg"]
    assert (await project.get("/v1/models/m")).status_code == 404


@pytest.mark.parametrize("expression", DUCTO_REFUSED)
async def test_hostile_expressions_are_refused_at_put(project: Project, expression: str) -> None:
    r = await project.put("/v1/models/m", {"expression": expression})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "expression"]


# ducto's pricing cases (tests/parity/expression_cases.json, pricing_cases, and its README
# config), mapped onto creditd: model + tools + search + cache terms in one model expression.
DUCTO_PRICING = [
    ("default_model", {"_default": "input_tokens * (0.01 / 1000) + output_tokens * (0.03 / 1000)"},
     "gpt-4", {"input_tokens": 500, "output_tokens": 200}, "0.011"),
    ("fractional_total", {"_default": "input_tokens * 0.001"}, "gpt-4", {"input_tokens": 1500}, "1.5"),
    ("per_model_override", {"gpt-4": "input_tokens * 0.002", "_default": "input_tokens * 0.001"},
     "gpt-4", {"input_tokens": 1000}, "2"),
    ("falls_back_to_default", {"gpt-4": GPT4, "_default": "input_tokens * 0.001 + output_tokens * 0.003"},
     "unknown-model", {"input_tokens": 1000, "output_tokens": 1000}, "4"),
    ("tools_only", {"_default": "input_tokens * 0 + tool_calls * 0.01"}, "gpt-4", {"tool_calls": 5}, "0.05"),
    ("tools_with_model", {"_default": "input_tokens * 0.001 + tool_calls * 0.05"}, "gpt-4",
     {"input_tokens": 1000, "tool_calls": 2}, "1.1"),
    ("cache_discount", {"_default": "input_tokens * 0.002 + (0 - cache_read_tokens * 0.0002)"}, "gpt-4",
     {"input_tokens": 1000, "cache_read_tokens": 500}, "1.9"),
    ("cache_discount_exceeds_cost", {"_default": "input_tokens * 0.001 + (0 - cache_read_tokens * 0.01)"},
     "gpt-4", {"input_tokens": 100, "cache_read_tokens": 100}, "0"),
    ("search_costs", {"_default": "input_tokens * 0 + search_queries * 0.1"}, "gpt-4", {"search_queries": 3}, "0.3"),
    ("model_plus_tools_plus_search",
     {"_default": "input_tokens * 0.001 + tool_calls * 0.05 + search_queries * 0.1"}, "gpt-4",
     {"input_tokens": 2000, "tool_calls": 3, "search_queries": 2}, "2.35"),
    ("all_dimensions",
     {"gemini-2.5-flash": "input_tokens * 0.0005 + output_tokens * 0.0015 + web_search_calls * 0.5"
                          " + search_queries * 0.5 + search_results * 0.05 - cache_read_tokens * 0.0045"},
     "gemini-2.5-flash",
     {"input_tokens": 500, "output_tokens": 1000, "web_search_calls": 1, "search_queries": 2,
      "search_results": 10, "cache_read_tokens": 200}, "2.85"),
    ("total_clamped_to_zero",
     {"claude-opus-4": "input_tokens * 0.005 + output_tokens * 0.015 - cache_read_tokens * 0.0045"},
     "claude-opus-4", {"cache_read_tokens": 100000}, "0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("models", "model", "tokens", "expected"),
    [c[1:] for c in DUCTO_PRICING],
    ids=[c[0] for c in DUCTO_PRICING],
)
async def test_ducto_pricing_cases_charge_the_same(
    project: Project, models: dict[str, str], model: str, tokens: dict[str, int], expected: str
) -> None:
    for name, expression in models.items():
        await put_expr(project, name, expression)
    await project.user("u", credits=100)
    assert await usage(project, "u", model, **tokens) == Decimal(expected)


async def test_ducto_fixed_job_charges_its_price(project: Project) -> None:
    r = await project.put("/v1/jobs/batch_job", {"price": 20})
    assert r.status_code == 200, r.text
    await project.user("u", credits=100)
    r = await project.post("/v1/usage", {"user_id": "u", "job": "batch_job"})
    assert r.status_code == 201, r.text
    assert Decimal(str(body(r)["credits_used"])) == 20
    r = await project.post("/v1/usage", {"user_id": "u", "job": "batch_job", "quantity": 3})
    assert Decimal(str(body(r)["credits_used"])) == 60
    assert Decimal(str(body(r)["balance"])) == 20
    txn = body(await project.get(f"/v1/transactions/{body(r)['transaction_id']}"))
    assert txn["job"] is True
    assert txn["model"] == "batch_job"


async def test_jobs_crud(project: Project) -> None:
    assert (await project.put("/v1/jobs/a", {"price": "1.5"})).status_code == 200
    assert (await project.put("/v1/jobs/b", {"price": 2})).status_code == 200
    assert (await project.put("/v1/jobs/a", {"price": 3})).status_code == 200
    page = body(await project.get("/v1/jobs"))
    assert [(j["name"], j["price"]) for j in page["data"]] == [("a", 3), ("b", 2)]
    assert body(await project.get("/v1/jobs/b"))["price"] == 2
    assert (await project.delete("/v1/jobs/b")).status_code == 204
    assert (await project.get("/v1/jobs/b")).status_code == 404
    assert (await project.delete("/v1/jobs/b")).json()["code"] == "job_not_found"


async def test_unknown_job_is_422_and_creates_nobody(project: Project) -> None:
    r = await project.post("/v1/usage", {"user_id": "new", "job": "nope"})
    assert r.status_code == 422
    assert r.json()["code"] == "unknown_job"
    assert (await project.get("/v1/users/new")).status_code == 404
    await project.user("u", credits=10)
    r = await project.post("/v1/usage", {"user_id": "u", "job": "nope"})
    assert r.json()["code"] == "unknown_job"


@pytest.mark.parametrize(
    "payload",
    [
        {"user_id": "u"},
        {"user_id": "u", "model": "m", "job": "j", "tokens": {}},
        {"user_id": "u", "job": "j", "tokens": {"input_tokens": 1}},
        {"user_id": "u", "model": "m"},
        {"user_id": "u", "model": "m", "tokens": {}, "quantity": 2},
        {"user_id": "u", "job": "j", "quantity": 0},
    ],
)
async def test_usage_takes_exactly_one_of_model_and_job(
    project: Project, payload: dict[str, Any]
) -> None:
    r = await project.post("/v1/usage", payload)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"


async def test_job_price_times_tier_multiplier(project: Project) -> None:
    r = await project.post("/v1/tiers", {"id": "pro", "name": "Pro", "price_multiplier": "0.5"})
    assert r.status_code == 201, r.text
    await project.put("/v1/jobs/report", {"price": 10})
    await user(project, "u", 100, "pro")
    r = await project.post("/v1/usage", {"user_id": "u", "job": "report", "quantity": 3})
    assert Decimal(str(body(r)["credits_used"])) == 15


async def test_new_metrics_are_priced_by_expressions(project: Project) -> None:
    await put_expr(
        project,
        "m",
        "reasoning_tokens * 0.002 + images * 4 + audio_seconds * 0.1 + requests * 0.5"
        " + code_exec_calls * 0.3 + cache_write_tokens * 0.001",
    )
    await project.user("u", credits=100)
    got = await usage(
        project,
        "u",
        "m",
        reasoning_tokens=1000,
        images=2,
        audio_seconds="12.5",
        code_exec_calls=1,
        cache_write_tokens=500,
    )
    assert got == Decimal("2") + 8 + Decimal("1.25") + Decimal("0.5") + Decimal("0.3") + (
        Decimal("0.5")
    )


async def test_per_1k_prices_ignore_the_new_metrics(project: Project) -> None:
    await project.price("m", 1, 2, request_price="0.5")
    await project.user("u", credits=100)
    got = await usage(project, "u", "m", input_tokens=1000, images=5, tool_calls=9)
    assert got == Decimal("1.5")


async def test_cache_read_tokens_is_cached_input_tokens(project: Project) -> None:
    await project.price("m", 2, 0, cached_input_price_per_1k=1)
    await put_expr(project, "e", "cached_input_tokens * 0.001 + cache_read_tokens * 0.002")
    await project.user("u", credits=100)
    assert await usage(project, "u", "m", cache_read_tokens=1000) == 1
    assert await usage(project, "u", "m", cached_input_tokens=1000) == 1
    assert await usage(project, "u", "e", cache_read_tokens=1000) == 3
    r = await project.post(
        "/v1/usage",
        {
            "user_id": "u",
            "model": "m",
            "tokens": {"cached_input_tokens": 1, "cache_read_tokens": 2},
        },
    )
    assert r.status_code == 422


async def test_an_expression_that_cannot_price_a_usage_without_counts_is_refused(
    project: Project,
) -> None:
    # A completion without tokens prices every metric at 0: it must be priceable.
    r = await project.put("/v1/models/m", {"expression": "input_tokens / output_tokens"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["errors"]
    assert error["type"] == "expression_invalid"
    assert "no counts" in error["msg"]
    assert "max(output_tokens, 1)" in error["msg"]
    await put_expr(project, "m", "input_tokens / max(output_tokens, 1)")


# Priceable without counts (0 / -1), not with one output token (a division by zero).
FAILS_AT_ONE_OUTPUT = "input_tokens / (output_tokens - 1)"


async def test_an_expression_failing_for_a_one_shot_usage_is_422_and_charges_nothing(
    project: Project,
) -> None:
    await put_expr(project, "m", FAILS_AT_ONE_OUTPUT)
    await project.user("u", credits=100)
    r = await project.post(
        "/v1/usage",
        {"user_id": "u", "model": "m", "tokens": {"input_tokens": 5, "output_tokens": 1}},
    )
    assert r.status_code == 422
    assert r.json()["code"] == "expression_evaluation_failed"
    assert (await project.balance("u"))["total"] == 100


async def test_a_completion_its_expression_cannot_price_charges_the_hold(
    project: Project, db: Database
) -> None:
    """The usage happened and the price is the start's snapshot: the completion settles with
    the hold as the charge, and its event says why, instead of leaving the hold to expire."""
    await put_expr(project, "m", FAILS_AT_ONE_OUTPUT)
    await project.user("u", credits=100)
    txn = await _start(project, "m", input_tokens=6, output_tokens=3)  # 6 / 2 = 3 held
    r = await project.post(
        f"/v1/transactions/{txn}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 9, "output_tokens": 1}},
    )
    assert r.status_code == 200, r.text
    out = body(r)
    assert (out["status"], out["credits_used"], out["balance_adjustment"]) == ("completed", 3, 0)
    assert (await project.balance("u"))["total"] == 97
    async with db.transaction() as session:
        (data,) = (
            await session.execute(
                text(
                    "SELECT data FROM events WHERE project_id = :p"
                    " AND type = 'transaction.completed'"
                ),
                {"p": uuid.UUID(project.id)},
            )
        ).one()
    assert "division" in data["pricing_error"]
    again = await project.post(
        f"/v1/transactions/{txn}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 9, "output_tokens": 1}},
    )
    assert again.status_code == 200
    assert again.content == r.content


# --- the price snapshot -------------------------------------------------------------------


async def _start(project: Project, model: str, **tokens: Any) -> str:
    r = await project.post(
        "/v1/transactions/start",
        {"user_id": "u", "model": model, "provisional_tokens": tokens},
    )
    assert r.status_code == 201, r.text
    assert body(r)["continue"] is True, r.text
    return str(body(r)["transaction_id"])


async def _complete(project: Project, txn: str, **tokens: Any) -> Decimal:
    r = await project.post(
        f"/v1/transactions/{txn}/complete", {"success": True, "finalized_tokens": tokens}
    )
    assert r.status_code == 200, r.text
    return Decimal(str(body(r)["credits_used"]))


async def test_price_changed_between_start_and_complete_charges_the_start_price(
    project: Project,
) -> None:
    await put_expr(project, "m", "input_tokens * 0.01")
    await project.user("u", credits=100)
    txn = await _start(project, "m", input_tokens=100)
    await put_expr(project, "m", "input_tokens * 0.05")
    assert await _complete(project, txn, input_tokens=200) == 2
    txn2 = await _start(project, "m", input_tokens=100)
    await project.price("m", 1000, 1000)  # to a per-1K price
    assert await _complete(project, txn2, input_tokens=200) == 10


async def test_price_deleted_between_start_and_complete_charges_the_start_price(
    project: Project,
) -> None:
    await project.price("m", 10, 0)
    await project.user("u", credits=100)
    txn = await _start(project, "m", input_tokens=100)
    assert (await project.delete("/v1/models/m")).status_code == 204
    assert await _complete(project, txn, input_tokens=300) == 3


async def test_tier_changed_after_start_keeps_the_start_multiplier(project: Project) -> None:
    for tier, mult in (("a", "2"), ("b", "10")):
        r = await project.post("/v1/tiers", {"id": tier, "name": tier, "price_multiplier": mult})
        assert r.status_code == 201, r.text
    await put_expr(project, "m", "input_tokens * 0.01")
    await user(project, "u", 100, "a")
    txn = await _start(project, "m", input_tokens=100)
    r = await project.post("/v1/users/u/tier", {"tier_id": "b"})
    assert r.status_code == 200, r.text
    assert await _complete(project, txn, input_tokens=100) == 2


async def test_legacy_transaction_without_snapshot_uses_the_current_price(
    project: Project, db: Database
) -> None:
    await project.price("m", 10, 0)
    await project.user("u", credits=100)
    txn = await _start(project, "m", input_tokens=100)
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE transactions SET price_snapshot = NULL WHERE id = :id"),
            {"id": uuid.UUID(txn)},
        )
    await project.price("m", 20, 0)
    assert await _complete(project, txn, input_tokens=100) == 2


# --- tiers --------------------------------------------------------------------------------


async def test_tier_multiplier_applies_to_the_expression_result(project: Project) -> None:
    r = await project.post("/v1/tiers", {"id": "pro", "name": "Pro", "price_multiplier": "1.5"})
    assert r.status_code == 201, r.text
    await put_expr(project, "m", "input_tokens * 0.000001")
    await user(project, "u", 100, "pro")
    # 1 x 0.000001 x 1.5 = 0.0000015 → 0.000002 (rounded once, after the multiplier)
    assert await usage(project, "u", "m", input_tokens=1) == Decimal("0.000002")


async def test_tier_override_expression_replaces_the_price(project: Project) -> None:
    r = await project.post(
        "/v1/tiers",
        {
            "id": "pro",
            "name": "Pro",
            "price_multiplier": "3",
            "model_overrides": {"m": {"expression": "output_tokens * 0.1", "price_multiplier": 2}},
        },
    )
    assert r.status_code == 201, r.text
    await project.price("m", 1, 1)
    await user(project, "u", 100, "pro")
    assert await usage(project, "u", "m", input_tokens=1000, output_tokens=10) == 2


async def test_tier_override_with_bad_expression_is_422(project: Project) -> None:
    r = await project.post(
        "/v1/tiers",
        {"id": "pro", "name": "Pro", "model_overrides": {"m": {"expression": "x.y"}}},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"][-1] == "expression"
    r = await project.post(
        "/v1/tiers",
        {
            "id": "pro",
            "name": "Pro",
            "model_overrides": {"m": {"expression": GPT4, "input_price_per_1k": 1}},
        },
    )
    assert r.status_code == 422


# --- evaluate -----------------------------------------------------------------------------


async def test_evaluate_expression_matches_the_real_charge(project: Project) -> None:
    await put_expr(project, "m", "input_tokens * 0.01 + search_queries * 0.5")
    r = await project.post(
        "/v1/pricing/evaluate",
        {"model": "m", "tokens": {"input_tokens": 150, "search_queries": 3}},
    )
    assert r.status_code == 200, r.text
    out = body(r)
    assert out["credits"] == 3
    assert out["breakdown"]["kind"] == "expression"
    assert out["breakdown"]["variables"] == {"input_tokens": 150, "search_queries": 3}
    assert out["breakdown"]["multiplier"] == 1
    await project.user("u", credits=100)
    assert await usage(project, "u", "m", input_tokens=150, search_queries=3) == 3


async def test_evaluate_per_1k_with_user_tier_matches_the_real_charge(project: Project) -> None:
    r = await project.post("/v1/tiers", {"id": "pro", "name": "Pro", "price_multiplier": "0.8"})
    assert r.status_code == 201, r.text
    await project.price("m", "2.5", 10, cached_input_price_per_1k="1.25", request_price="0.01")
    await user(project, "u", 100, "pro")
    tokens = {"input_tokens": 123, "output_tokens": 77, "cached_input_tokens": 9}
    r = await project.post("/v1/pricing/evaluate", {"model": "m", "tokens": tokens, "user_id": "u"})
    assert r.status_code == 200, r.text
    out = body(r)
    assert out["breakdown"]["kind"] == "per_1k"
    assert out["breakdown"]["multiplier"] == Decimal("0.8")
    assert Decimal(str(out["credits"])) == await usage(project, "u", "m", **tokens)
    assert await project.balance("u") != {}  # evaluate itself charged nothing:
    r = await project.get("/v1/transactions", params={"user_id": "u"})
    assert len(body(r)["data"]) == 1


async def test_evaluate_unknown_model_is_422(project: Project) -> None:
    r = await project.post("/v1/pricing/evaluate", {"model": "m", "tokens": {}})
    assert r.status_code == 422
    assert r.json()["code"] == "unknown_model"
