"""Razorpay subscriptions end to end: started through the API (the real adapter and SDK create a
subscription on the fake Razorpay), driven by the fake's signed webhooks POSTed to the receiver,
canceled through the API (which cancels at the fake)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.razorpay_server import Delivery, FakeRazorpay
from tests.helpers import balance, body
from tests.plans.test_plans import allocation_rows, event_types, make_plan, user_tier
from tests.tiers.test_tiers import make_tier


async def configure(project: Project, fake: FakeRazorpay) -> None:
    r = await project.put(
        "/v1/providers/razorpay",
        {
            "key_id": fake.key_id,
            "key_secret": fake.key_secret,
            "webhook_secret": fake.webhook_secret,
        },
    )
    assert r.status_code == 200, r.text


async def deliver(project: Project, delivery: Delivery) -> dict[str, Any]:
    r = await project.client.post(
        f"/v1/webhooks/razorpay/{project.id}", content=delivery.body, headers=delivery.headers
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def get_sub(project: Project, sub_id: str) -> dict[str, Any]:
    r = await project.get(f"/v1/subscriptions/{sub_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = body(r)
    return out


async def subscription_grants(db: Database, project: Project) -> list[Any]:
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT g.category, g.amount, g.cost_amount, g.cost_currency,"
                " p.provider_reference, p.provider_payment_id, p.kind, p.status"
                " FROM grants g JOIN payments p"
                " ON p.project_id = g.project_id AND p.id = g.payment_id"
                " WHERE g.project_id = :p AND g.user_id = 'u' AND g.source = 'subscription'"
                " ORDER BY g.created_at, g.id"
            ),
            {"p": project.id},
        )
        return list(rows.all())


async def started(project: Project, fake: FakeRazorpay) -> tuple[dict[str, Any], str]:
    """User u on the default tier free; plan pro (tier gold, 999.00 INR a month, 100 credits)
    on a Razorpay plan; a subscription started through the API. Returns it and its
    checkout URL."""
    await configure(project, fake)
    rzp_plan = fake.create_plan(99900, "INR")
    await make_tier(project, "free", credits=0, is_default=True)
    await make_tier(project, "gold", credits=0)
    await make_plan(
        project,
        "pro",
        tier_id="gold",
        razorpay_plan_id=rzp_plan,
        price={"amount": "999.00", "currency": "INR"},
    )
    r = await project.post("/v1/users", {"id": "u"})
    assert r.status_code == 201, r.text
    r = await project.post("/v1/users/u/subscriptions", {"plan_id": "pro", "provider": "razorpay"})
    assert r.status_code == 201, r.text
    out = body(r)
    return out["subscription"], out["checkout_url"]


async def active(project: Project, fake: FakeRazorpay) -> tuple[dict[str, Any], list[Delivery]]:
    """``started`` + activated and the first period charged (100 credits, tier gold)."""
    sub, _ = await started(project, fake)
    rzp_id = sub["provider_subscription_id"]
    await deliver(project, fake.activate(rzp_id))
    first = fake.charge(rzp_id)
    assert (await deliver(project, first))["outcome"] == "applied"
    assert await user_tier(project, "u") == "gold"
    return sub, [first]


async def test_a_razorpay_subscription_starts_at_the_provider_with_its_checkout_url(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, checkout_url = await started(project, fake_razorpay)

    rzp_id = sub["provider_subscription_id"]
    at_razorpay = fake_razorpay.subscriptions[rzp_id]
    assert checkout_url == at_razorpay["short_url"]
    assert at_razorpay["plan_id"] in fake_razorpay.plans
    assert at_razorpay["notes"]["creditd_subscription_id"] == sub["id"]
    assert (sub["provider"], sub["status"]) == ("razorpay", "incomplete")
    assert (await balance(project, "u"))["total"] == 0
    assert await user_tier(project, "u") == "free"


async def test_activation_and_three_charges_grant_three_paid_periods_once_each(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, _ = await started(project, fake_razorpay)
    rzp_id = sub["provider_subscription_id"]

    # Authorised, nothing paid yet: it stays incomplete until its first period is charged.
    assert (await deliver(project, fake_razorpay.activate(rzp_id)))["outcome"] == "ignored"
    assert (await get_sub(project, sub["id"]))["status"] == "incomplete"
    assert (await balance(project, "u"))["total"] == 0
    charges = [fake_razorpay.charge(rzp_id) for _ in range(3)]
    outcomes = [(await deliver(project, c))["outcome"] for c in charges]

    assert outcomes == ["applied"] * 3
    assert (await balance(project, "u"))["total"] == 300
    assert len(await allocation_rows(db, project, "u")) == 3
    grants = await subscription_grants(db, project)
    charged = [c.payload["payload"]["payment"]["entity"]["id"] for c in charges]
    assert [g.provider_reference for g in grants] == charged
    assert [g.provider_payment_id for g in grants] == charged
    assert all(g.category == "paid" and g.kind == "subscription" for g in grants)
    assert {(g.amount, g.cost_amount, g.cost_currency) for g in grants} == {(100, 999, "INR")}
    out = await get_sub(project, sub["id"])
    assert out["status"] == "active"
    last = charges[-1].payload["payload"]["subscription"]["entity"]
    assert datetime.fromisoformat(out["current_period_start"]) == datetime.fromtimestamp(
        last["current_start"], UTC
    )
    assert datetime.fromisoformat(out["current_period_end"]) == datetime.fromtimestamp(
        last["current_end"], UTC
    )
    assert await user_tier(project, "u") == "gold"
    types = await event_types(project, "u")
    assert types.count("credits.granted") == 3
    await assert_ledger_consistent(db)


def later(fake: FakeRazorpay) -> None:
    """Move the fake's clock on a second: an event it signs now differs from earlier ones in
    created_at (a byte-identical body is a duplicate whatever its event id)."""
    clock = fake.clock
    fake.clock = lambda: clock() + 1


async def test_a_replayed_charge_grants_nothing(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    _, [first] = await active(project, fake_razorpay)
    entities = first.payload["payload"]

    # The same delivery again, and the same charge in a new event (another event id).
    assert (await deliver(project, first))["duplicate"] is True
    later(fake_razorpay)
    again = fake_razorpay.event(
        "subscription.charged",
        subscription=entities["subscription"]["entity"],
        payment=entities["payment"]["entity"],
    )
    assert again.event_id != first.event_id
    assert (await deliver(project, again))["duplicate"] is False
    # The subscription's payment.captured is not a top-up: nothing either.
    captured = fake_razorpay.captured(entities["payment"]["entity"]["id"])
    assert (await deliver(project, captured))["outcome"] == "ignored"

    assert (await balance(project, "u"))["total"] == 100
    assert len(await subscription_grants(db, project)) == 1
    assert len(await allocation_rows(db, project, "u")) == 1
    await assert_ledger_consistent(db)


async def test_a_failed_renewal_is_past_due_then_halted_moves_to_the_default_tier(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, _ = await active(project, fake_razorpay)
    rzp_id = sub["provider_subscription_id"]

    assert (await deliver(project, fake_razorpay.pending(rzp_id)))["outcome"] == "applied"
    assert (await get_sub(project, sub["id"]))["status"] == "past_due"
    assert await user_tier(project, "u") == "gold", "still the plan's while Razorpay retries"

    assert (await deliver(project, fake_razorpay.halt(rzp_id)))["outcome"] == "applied"
    out = await get_sub(project, sub["id"])
    assert out["status"] == "canceled"
    assert out["ended_at"] is not None
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == 100, "paid periods are kept"
    types = await event_types(project, "u")
    assert "subscription.past_due" in types
    assert "subscription.ended" in types
    await assert_ledger_consistent(db)


async def test_a_past_due_subscription_charged_at_last_is_active_again(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, _ = await active(project, fake_razorpay)
    rzp_id = sub["provider_subscription_id"]
    await deliver(project, fake_razorpay.pending(rzp_id))

    assert (await deliver(project, fake_razorpay.charge(rzp_id)))["outcome"] == "applied"

    assert (await get_sub(project, sub["id"]))["status"] == "active"
    assert (await balance(project, "u"))["total"] == 200
    await assert_ledger_consistent(db)


@pytest.mark.parametrize("at_period_end", [False, True])
async def test_cancel_through_the_api_cancels_at_razorpay(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, at_period_end: bool
) -> None:
    sub, _ = await active(project, fake_razorpay)
    rzp_id = sub["provider_subscription_id"]

    r = await project.post(
        f"/v1/subscriptions/{sub['id']}/cancel", {"at_period_end": at_period_end}
    )

    assert r.status_code == 200, r.text
    [call] = [
        req
        for req in fake_razorpay.requests
        if (req.method, req.path) == ("POST", f"/v1/subscriptions/{rzp_id}/cancel")
    ]
    assert call.body == {"cancel_at_cycle_end": 1 if at_period_end else 0}
    at_razorpay = fake_razorpay.subscriptions[rzp_id]
    out = await get_sub(project, sub["id"])
    if at_period_end:
        assert at_razorpay["status"] == "active"
        assert at_razorpay["has_scheduled_changes"] is True
        assert (out["status"], out["cancel_at_period_end"]) == ("active", True)
        assert await user_tier(project, "u") == "gold"
        # Razorpay ends it at the cycle's end and says so.
        ended = fake_razorpay.cancel_subscription(rzp_id)
        assert (await deliver(project, ended))["outcome"] == "applied"
    else:
        assert at_razorpay["status"] == "cancelled"
        assert out["status"] == "canceled"
        # Razorpay's own event about the cancellation changes nothing more.
        ended = fake_razorpay.cancel_subscription(rzp_id)
        assert (await deliver(project, ended))["outcome"] == "stale"
    out = await get_sub(project, sub["id"])
    assert out["status"] == "canceled"
    assert out["ended_at"] is not None
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == 100
    await assert_ledger_consistent(db)


async def test_a_refunded_charge_claws_back_its_periods_credits_only(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, [first] = await active(project, fake_razorpay)
    second = fake_razorpay.charge(sub["provider_subscription_id"])
    await deliver(project, second)
    assert (await balance(project, "u"))["total"] == 200
    pay_id = second.payload["payload"]["payment"]["entity"]["id"]

    # Half of the second period's money back: half its credits go, the first period's stay.
    refund = fake_razorpay.refund(pay_id, 49950)
    assert (await deliver(project, refund))["outcome"] == "applied"

    assert (await balance(project, "u"))["total"] == 150
    r = await project.get("/v1/payments", params={"user_id": "u", "limit": 10})
    assert r.status_code == 200, r.text
    by_charge = {p["provider_payment_id"]: p for p in body(r)["data"]}
    refunded = by_charge[pay_id]
    assert (refunded["kind"], refunded["status"]) == ("subscription", "partially_refunded")
    assert refunded["credits_clawed_back"] == 50
    untouched = by_charge[first.payload["payload"]["payment"]["entity"]["id"]]
    assert (untouched["status"], untouched["credits_clawed_back"]) == ("succeeded", 0)

    lost = fake_razorpay.dispute(pay_id, "lost")
    assert (await deliver(project, lost))["outcome"] == "applied"
    assert (await balance(project, "u"))["total"] == 100
    assert (await get_sub(project, sub["id"]))["status"] == "active"
    await assert_ledger_consistent(db)


async def test_one_charge_delivered_concurrently_over_http_grants_once(
    live_project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    project = live_project
    sub, _ = await active(project, fake_razorpay)
    charge = fake_razorpay.charge(sub["provider_subscription_id"])
    entities = charge.payload["payload"]
    # Razorpay's retries of one event, and the same charge in another event.
    later(fake_razorpay)
    resent = fake_razorpay.event(
        "subscription.charged",
        subscription=entities["subscription"]["entity"],
        payment=entities["payment"]["entity"],
    )

    deliveries = [charge, resent] * 10
    answers = await asyncio.gather(*(deliver(project, d) for d in deliveries))

    assert sum(not a["duplicate"] for a in answers) == 2
    assert (await balance(project, "u"))["total"] == 200
    assert len(await subscription_grants(db, project)) == 2
    assert len(await allocation_rows(db, project, "u")) == 2
    await assert_ledger_consistent(db)


async def test_razorpay_down_at_start_or_cancel_is_503_and_changes_nothing(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    sub, _ = await active(project, fake_razorpay)
    before = await get_sub(project, sub["id"])

    fake_razorpay.fail_next(status=502, html=True)
    r = await project.post(f"/v1/subscriptions/{sub['id']}/cancel", {"at_period_end": False})

    assert r.status_code == 503, r.text
    assert r.json()["code"] == "provider_unavailable"
    assert await get_sub(project, sub["id"]) == before
    assert fake_razorpay.subscriptions[sub["provider_subscription_id"]]["status"] == "active"
    assert await user_tier(project, "u") == "gold"

    await project.post("/v1/users", {"id": "v"})
    fake_razorpay.fail_next(status=500)
    r = await project.post("/v1/users/v/subscriptions", {"plan_id": "pro", "provider": "razorpay"})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "provider_unavailable"
    r = await project.get("/v1/users/v/subscriptions")
    assert r.status_code == 200, r.text
    assert body(r)["data"] == []


@pytest.mark.parametrize("ending", ["cancel_subscription", "complete"])
async def test_a_subscription_ended_at_razorpay_ends_here_and_keeps_the_credits(
    project: Project, fake_razorpay: FakeRazorpay, db: Database, ending: str
) -> None:
    sub, _ = await active(project, fake_razorpay)

    ended = getattr(fake_razorpay, ending)(sub["provider_subscription_id"])
    assert (await deliver(project, ended))["outcome"] == "applied"

    out = await get_sub(project, sub["id"])
    assert out["status"] == "canceled"
    assert out["ended_at"] is not None
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == 100
    await assert_ledger_consistent(db)
