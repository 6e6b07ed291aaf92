"""Every rule of the usage-transaction lifecycle in API.md, one behaviour per test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.core.clock import utcnow
from app.db.session import Database
from app.pricing.schemas import TokenUsage
from app.workers.runner import sweep_holds_once
from tests.conftest import Project
from tests.helpers import balance, body, complete, ledger, start, tokens


@pytest.fixture
async def priced(project: Project) -> Project:
    # gpt-4o: 2.5 per 1K input, 10 per 1K output, 1.25 per 1K cached input, 0.01 per request.
    await project.price(
        "gpt-4o",
        Decimal("2.5"),
        10,
        cached_input_price_per_1k=Decimal("1.25"),
        request_price=Decimal("0.01"),
    )
    await project.price("_default", 1, 1)
    return project


async def test_start_holds_the_price_of_the_provisional_tokens(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    # 100 x 2.5/1000 + 500 x 10/1000 + 0.01 = 0.25 + 5 + 0.01
    assert txn["hold_amount"] == Decimal("5.26")
    assert txn["credits_used"] == Decimal("5.26")
    assert txn["balance"] == Decimal("94.74")
    assert txn["status"] == "pending"
    assert txn["continue"] is True
    assert txn["reason"] is None
    assert await balance(priced, "u") == {
        "available": Decimal("94.74"),
        "held": Decimal("5.26"),
        "total": Decimal(100),
    }


async def test_cost_is_rounded_half_up_to_six_places(project: Project) -> None:
    await project.price("_default", Decimal("0.000001"), 0)
    await project.user("u", credits=1)
    txn = await start(project, "u", inp=500)  # 500 x 0.000001 / 1000 = 0.0000005 → 0.000001
    assert txn["hold_amount"] == Decimal("0.000001")


async def test_cached_input_tokens_use_their_own_price(priced: Project) -> None:
    await priced.user("u", credits=100)
    r = await priced.post(
        "/v1/transactions/start",
        {"user_id": "u", "model": "gpt-4o", "provisional_tokens": {"cached_input_tokens": 1000}},
    )
    assert body(r)["hold_amount"] == Decimal("1.26")


async def test_unknown_model_falls_back_to_default_price(priced: Project) -> None:
    await priced.user("u", credits=100)
    r = await priced.post(
        "/v1/transactions/start",
        {"user_id": "u", "model": "claude-x", "provisional_tokens": tokens(2000, 1000)},
    )
    assert body(r)["hold_amount"] == Decimal(3)


async def test_start_without_any_price_is_unknown_model(project: Project) -> None:
    r = await project.post("/v1/transactions/start", {"user_id": "u", "model": "gpt-4o"})
    assert r.status_code == 422
    assert r.json()["code"] == "unknown_model"
    assert (await project.get("/v1/users/u")).status_code == 404, "nothing was created"


async def test_start_without_tokens_holds_nothing_and_needs_a_positive_balance(
    priced: Project,
) -> None:
    await priced.user("rich", credits=1)
    await priced.user("empty")
    ok = await start(priced, "rich")
    assert ok["continue"] is True
    assert ok["hold_amount"] == 0
    denied = await start(priced, "empty")
    assert denied["continue"] is False
    assert denied["reason"] == "insufficient_credits"


async def test_start_exactly_at_the_balance_is_admitted(priced: Project) -> None:
    await priced.user("u", credits=Decimal("5.26"))
    txn = await start(priced, "u", inp=100, out=500)
    assert txn["continue"] is True
    assert txn["balance"] == 0


async def test_denied_start_holds_nothing_and_cannot_be_completed(priced: Project) -> None:
    await priced.user("u", credits=1)
    txn = await start(priced, "u", inp=100, out=500)
    assert txn["continue"] is False
    assert txn["status"] == "denied"
    assert txn["hold_amount"] == 0
    assert txn["expires_at"] is None
    assert await balance(priced, "u") == {"available": 1, "held": 0, "total": 1}
    r = await complete(priced, txn["transaction_id"], inp=1)
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_denied"


async def test_start_auto_creates_an_unknown_user(priced: Project) -> None:
    txn = await start(priced, "newcomer")
    assert txn["continue"] is False
    user = body(await priced.get("/v1/users/newcomer"))
    assert user["balance"] == {"available": 0, "held": 0, "total": 0}


async def test_start_for_unknown_user_is_404_when_auto_create_is_off(priced: Project) -> None:
    r = await priced.patch("/v1/project", {"settings": {"auto_create_users": False}})
    assert r.status_code == 200
    r = await priced.post("/v1/transactions/start", {"user_id": "nobody", "model": "gpt-4o"})
    assert r.status_code == 404
    assert r.json()["code"] == "user_not_found"


async def test_successful_completion_charges_in_full_and_releases_the_hold(
    priced: Project,
) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)  # hold 5.26
    r = await complete(priced, txn["transaction_id"], inp=1000, out=100)  # 2.5 + 1 + 0.01
    assert r.status_code == 200
    result = body(r)
    assert result == {
        "transaction_id": txn["transaction_id"],
        "status": "completed",
        "credits_used": Decimal("3.51"),
        "balance": Decimal("96.49"),
        "balance_adjustment": Decimal("1.75"),
        "late": False,
    }
    assert await balance(priced, "u") == {
        "available": Decimal("96.49"),
        "held": 0,
        "total": Decimal("96.49"),
    }


async def test_completion_above_the_hold_is_never_clamped(priced: Project) -> None:
    await priced.user("u", credits=10)
    txn = await start(priced, "u", inp=100, out=500)  # hold 5.26
    r = await complete(priced, txn["transaction_id"], out=2000)  # 20.01
    result = body(r)
    assert result["credits_used"] == Decimal("20.01")
    assert result["balance"] == Decimal("-10.01")
    assert result["balance_adjustment"] == Decimal("-14.75")
    assert await balance(priced, "u") == {
        "available": Decimal("-10.01"),
        "held": 0,
        "total": Decimal("-10.01"),
    }


async def test_failed_completion_releases_the_hold_and_charges_nothing(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    r = await complete(priced, txn["transaction_id"], success=False)
    result = body(r)
    assert result["status"] == "failed"
    assert result["credits_used"] == 0
    assert result["balance_adjustment"] == Decimal("5.26")
    assert await balance(priced, "u") == {"available": 100, "held": 0, "total": 100}


async def test_success_without_finalized_tokens_charges_the_provisional_tokens(
    priced: Project,
) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    r = await priced.post(f"/v1/transactions/{txn['transaction_id']}/complete", {"success": True})
    assert body(r)["credits_used"] == Decimal("5.26")


async def test_complete_twice_with_same_body_replays_first_result(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    first = await complete(priced, txn["transaction_id"], inp=10)
    await priced.grant("u", 50)  # the balance moves; the replay still shows the first result
    again = await complete(priced, txn["transaction_id"], inp=10)
    assert again.status_code == 200
    assert again.content == first.content
    charges = [e for e in await ledger(priced, "u") if e["kind"] == "usage"]
    assert len(charges) == 1


async def test_complete_again_with_different_body_is_409(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    await complete(priced, txn["transaction_id"], inp=10)
    r = await complete(priced, txn["transaction_id"], success=False)
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_already_completed"


async def test_complete_unknown_or_malformed_id_is_404(priced: Project) -> None:
    for txn_id in ("0190f0a0-0000-7000-8000-000000000000", "not-a-uuid"):
        r = await complete(priced, txn_id)
        assert r.status_code == 404
        assert r.json()["code"] == "transaction_not_found"


async def test_sweeper_expires_holds_past_their_ttl(priced: Project, db: Database) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500, hold_ttl_seconds=1)
    keep = await start(priced, "u", inp=100, out=500, hold_ttl_seconds=600)
    import asyncio

    await asyncio.sleep(1.1)
    assert await sweep_holds_once(db, batch_size=10) >= 1
    got = body(await priced.get(f"/v1/transactions/{txn['transaction_id']}"))
    assert got["status"] == "expired"
    assert (
        body(await priced.get(f"/v1/transactions/{keep['transaction_id']}"))["status"] == "pending"
    )
    assert await balance(priced, "u") == {
        "available": Decimal("94.74"),
        "held": Decimal("5.26"),
        "total": 100,
    }
    events = body(await priced.get("/v1/events", params={"type": "transaction.expired"}))["data"]
    assert [e["data"]["transaction_id"] for e in events] == [txn["transaction_id"]]


async def test_late_success_after_expiry_still_charges_with_late_flag(
    priced: Project, db: Database
) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500, hold_ttl_seconds=1)
    import asyncio

    await asyncio.sleep(1.1)
    await sweep_holds_once(db, batch_size=10)
    r = await complete(priced, txn["transaction_id"], inp=1000)
    result = body(r)
    assert result["status"] == "completed"
    assert result["late"] is True
    assert result["credits_used"] == Decimal("2.51")
    assert result["balance_adjustment"] == Decimal("-2.51")
    assert await balance(priced, "u") == {
        "available": Decimal("97.49"),
        "held": 0,
        "total": Decimal("97.49"),
    }


async def test_extend_moves_expiry_of_a_pending_transaction(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, hold_ttl_seconds=60)
    before = datetime.fromisoformat(txn["expires_at"])
    r = await priced.post(
        f"/v1/transactions/{txn['transaction_id']}/extend", {"hold_ttl_seconds": 3600}
    )
    assert r.status_code == 200
    after = datetime.fromisoformat(body(r)["expires_at"])
    assert after - before > timedelta(minutes=50)
    assert after > utcnow().astimezone(UTC) + timedelta(minutes=59)


async def test_extend_a_completed_transaction_is_409(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100)
    await complete(priced, txn["transaction_id"], inp=100)
    r = await priced.post(
        f"/v1/transactions/{txn['transaction_id']}/extend", {"hold_ttl_seconds": 60}
    )
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_not_pending"


async def test_partial_refunds_accumulate_up_to_credits_used(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100)
    await complete(priced, txn["transaction_id"], out=1000)  # 10.01
    url = f"/v1/transactions/{txn['transaction_id']}/refund"
    first = body(await priced.post(url, {"amount": 4, "reason": "bad answer"}))
    assert first["amount"] == 4
    assert first["refunded_total"] == 4
    assert first["balance"] == Decimal("93.99")
    second = await priced.post(url, {"amount": Decimal("6.02")})
    assert second.status_code == 409
    assert second.json()["code"] == "over_refund"
    rest = body(await priced.post(url, {}))
    assert rest["amount"] == Decimal("6.01")
    assert rest["refunded_total"] == Decimal("10.01")
    again = await priced.post(url, {"amount": Decimal("0.000001")})
    assert again.status_code == 409
    assert await balance(priced, "u") == {"available": 100, "held": 0, "total": 100}


async def test_refund_of_a_pending_transaction_is_409(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100)
    r = await priced.post(f"/v1/transactions/{txn['transaction_id']}/refund", {"amount": 1})
    assert r.status_code == 409
    assert r.json()["code"] == "transaction_not_completed"


async def test_one_shot_usage_charges_in_full_even_past_the_balance(priced: Project) -> None:
    await priced.user("u", credits=1)
    r = await priced.post(
        "/v1/usage", {"user_id": "u", "model": "gpt-4o", "tokens": tokens(0, 1000)}
    )
    assert r.status_code == 201
    result = body(r)
    assert result["status"] == "completed"
    assert result["credits_used"] == Decimal("10.01")
    assert result["balance"] == Decimal("-9.01")
    got = body(await priced.get(f"/v1/transactions/{result['transaction_id']}"))
    assert got["status"] == "completed"
    assert got["credits_used"] == Decimal("10.01")


async def test_check_reports_without_side_effects(priced: Project) -> None:
    await priced.user("u", credits=10)
    r = await priced.post(
        "/v1/check", {"user_id": "u", "model": "gpt-4o", "provisional_tokens": tokens(0, 1000)}
    )
    assert body(r) == {
        "allowed": False,
        "reason": "insufficient_credits",
        "available": 10,
        "required": Decimal("10.01"),
    }
    r = await priced.post("/v1/check", {"user_id": "u", "amount": 10})
    assert body(r) == {"allowed": True, "reason": None, "available": 10, "required": 10}
    r = await priced.post("/v1/check", {"user_id": "ghost", "amount": 1})
    assert body(r)["allowed"] is False
    assert (await priced.get("/v1/users/ghost")).status_code == 404
    assert len(await ledger(priced, "u")) == 1


async def test_list_transactions_filters_and_paginates(priced: Project) -> None:
    await priced.user("a", credits=100)
    await priced.user("b", credits=100)
    ids = [
        (await start(priced, "a", inp=10, feature_identifier="chat"))["transaction_id"]
        for _ in range(3)
    ]
    await start(priced, "b", inp=10, feature_identifier="search")
    await complete(priced, ids[0], inp=10)

    page = body(await priced.get("/v1/transactions", params={"user_id": "a", "limit": 2}))
    assert [t["id"] for t in page["data"]] == ids[:2]
    assert page["has_more"] is True
    rest = body(
        await priced.get(
            "/v1/transactions", params={"user_id": "a", "starting_after": page["next_cursor"]}
        )
    )
    assert [t["id"] for t in rest["data"]] == ids[2:]
    assert rest["has_more"] is False
    pending = body(
        await priced.get("/v1/transactions", params={"status": "pending", "user_id": "a"})
    )
    assert [t["id"] for t in pending["data"]] == ids[1:]
    search = body(await priced.get("/v1/transactions", params={"feature_identifier": "search"}))
    assert [t["user_id"] for t in search["data"]] == ["b"]


async def test_every_state_change_writes_an_event(priced: Project) -> None:
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100)
    await complete(priced, txn["transaction_id"], inp=100)
    await start(priced, "u", inp=10**9)  # denied
    events = body(await priced.get("/v1/events", params={"user_id": "u"}))["data"]
    assert [e["type"] for e in events] == [
        "balance.recovered",  # the first credits: 0 -> 100, written with the grant's change
        "credits.granted",
        "transaction.started",
        "transaction.completed",
        "transaction.denied",
    ]
    assert events[3]["data"]["transaction_id"] == txn["transaction_id"]
    assert events[3]["data"]["balance"] == Decimal("99.74")


async def test_a_transaction_returns_its_token_counts_in_the_published_token_usage_shape(
    priced: Project,
) -> None:
    # The spec publishes provisional/finalized_tokens as TokenUsage (typed in generated
    # clients): the stored counts come back with exactly its fields.
    await priced.user("u", credits=100)
    txn = await start(priced, "u", inp=100, out=500)
    r = await complete(priced, txn["transaction_id"], inp=80, out=400)
    assert r.status_code == 200, r.text
    got = body(await priced.get(f"/v1/transactions/{txn['transaction_id']}"))
    # Every metric of the shape, 0 where none was sent.
    zeros = dict.fromkeys(TokenUsage.model_fields, 0)
    assert got["provisional_tokens"] == {**zeros, "input_tokens": 100, "output_tokens": 500}
    assert got["finalized_tokens"] == {**zeros, "input_tokens": 80, "output_tokens": 400}


async def test_text_of_any_kind_survives_the_write_sent_with_the_commit(priced: Project) -> None:
    """A start's and a completion's last write travels with the COMMIT as literals: quotes,
    backslashes, dollar signs and any Unicode in ids, features and metadata arrive intact."""
    odd = "it's \\ $1 $$ 'x'; -- é ✓ 𝄞"
    user = "it's\\$1$$'x';--"  # user ids are printable ASCII without space or slash
    await priced.user(user, credits=100)
    started = await priced.post(
        "/v1/transactions/start",
        {
            "user_id": user,
            "model": "gpt-4o",
            "feature_identifier": odd,
            "provisional_tokens": {"input_tokens": 1000},
            "metadata": {odd: odd, "nested": {"q": "'\\'"}},
        },
    )
    assert started.status_code == 201, started.text
    txn = started.json()["transaction_id"]
    done = await priced.post(
        f"/v1/transactions/{txn}/complete",
        {"success": True, "finalized_tokens": {"input_tokens": 500}, "metadata": {"end": odd}},
    )
    assert done.status_code == 200, done.text
    stored = (await priced.get(f"/v1/transactions/{txn}")).json()
    assert stored["user_id"] == user
    assert stored["feature_identifier"] == odd
    assert stored["metadata"] == {odd: odd, "nested": {"q": "'\\'"}, "end": odd}
    assert stored["status"] == "completed"
