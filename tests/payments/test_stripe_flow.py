"""Stripe end to end: HTTP requests to creditd, the real Stripe adapter and official SDK talking
to the fake Stripe, and webhooks signed by the fake with Stripe's scheme and POSTed as raw
bytes. After every money test `creditd verify` is clean and the money is checked through the
API (balance, grants, payment, liability)."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.cli import run_migrations
from app.core.clock import utcnow
from app.core.settings import ApiSettings, DatabaseSettings, PaymentsSettings, Settings
from app.db.session import Database
from app.main import create_app
from app.payments import reconcile
from tests.conftest import ADMIN_TOKEN, Project, assert_ledger_consistent, create_project
from tests.fakes.stripe_server import FakeStripe
from tests.fixtures.own_server import OwnServer, own_server
from tests.helpers import balance, body
from tests.payments.helpers import event_types, grants
from tests.payments.stripe_helpers import (
    SUCCESS_URL,
    configure,
    created,
    deliver,
    deliver_all,
    intent_of,
    payment,
    post_raw,
    provider_events,
    signature_failures,
)
from tests.plans.test_plans import make_plan, user_tier
from tests.tiers.test_tiers import make_tier


async def paid_top_up(project: Project, fake: FakeStripe, **extra: Any) -> tuple[Any, str]:
    """A top-up the payer completed and whose webhook creditd received: (payment, intent)."""
    out = await created(project, **extra)
    assert await deliver_all(project, fake, fake.pay(out["provider_reference"])) == ["applied"]
    return out, intent_of(fake, out["provider_reference"])


# --- the happy path ------------------------------------------------------------------------------


async def test_a_stripe_top_up_is_credited_once_paid(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    out = await created(project, amount="12.50", credits=250)
    session_id = out["provider_reference"]
    assert out["status"] == "created"
    assert out["checkout_url"] == f"https://checkout.stripe.com/c/pay/{session_id}"
    # What Stripe was asked for: the exact amount, and our ids to find the payment again.
    session = fake_stripe.session(session_id)
    assert (session["amount_total"], session["currency"]) == (1250, "usd")
    assert session["client_reference_id"] == out["id"]
    assert session["success_url"] == SUCCESS_URL
    assert (await balance(project, "u"))["total"] == 0

    [completed] = fake_stripe.pay(session_id)
    r = await deliver(project, fake_stripe, completed)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "duplicate": False, "outcome": "applied"}

    assert (await balance(project, "u"))["total"] == 250
    [grant] = await grants(project)
    assert grant["category"] == "paid"
    assert grant["payment_id"] == out["id"]
    assert (grant["amount"], grant["remaining"]) == (250, 250)
    assert (grant["cost_basis"], grant["cost_currency"]) == (Decimal("0.05"), "USD")
    got = await payment(project, out["id"])
    assert got["status"] == "succeeded"
    assert got["credits_granted"] == 250
    assert got["provider_payment_id"] == intent_of(fake_stripe, session_id)
    assert got["succeeded_at"] is not None
    r = await project.get("/v1/analytics/liability")
    assert r.status_code == 200, r.text
    liability = body(r)
    assert liability["paid"] == [{"currency": "USD", "credits": 250, "value": Decimal("12.5")}]
    assert liability["promotional_credits"] == 0
    assert [e["data"]["payment_id"] for e in await event_types(project, "payment.succeeded")] == [
        out["id"]
    ]
    await assert_ledger_consistent(db)


async def test_twenty_concurrent_deliveries_over_http_grant_once(
    live_project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    project = live_project
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    raw, headers = fake_stripe.sign(completed)

    responses = await asyncio.gather(*(post_raw(project, raw, headers) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    duplicates = sorted(r.json()["duplicate"] for r in responses)
    assert duplicates == [False] + [True] * 19
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    assert (await payment(project, out["id"]))["credits_granted"] == 100
    assert len(await provider_events(db, project)) == 1
    await assert_ledger_consistent(db)


# --- refused deliveries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("forged", "invalid_signature"),
        ("wrong_secret", "invalid_signature"),
        ("old_timestamp", "invalid_signature"),
        ("body_changed", "invalid_signature"),
        ("no_secret", "webhook_not_configured"),
    ],
)
async def test_a_delivery_that_does_not_verify_is_400_and_changes_nothing(
    project: Project, fake_stripe: FakeStripe, db: Database, case: str, code: str
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    raw, headers = fake_stripe.sign(completed)
    if case == "forged":
        headers["stripe-signature"] = f"t={int(time.time())},v1={'ab' * 32}"
    elif case == "wrong_secret":
        raw, headers = fake_stripe.sign(completed, secret="whsec_someone_else")
    elif case == "old_timestamp":
        raw, headers = fake_stripe.sign(completed, timestamp=int(time.time()) - 301)
    elif case == "body_changed":
        changed = raw.replace(b'"amount_total": 1000', b'"amount_total": 1001')
        assert len(changed) == len(raw)
        assert changed != raw
        raw = changed
    elif case == "no_secret":
        assert (await project.delete("/v1/providers/stripe")).status_code == 204
    before = signature_failures()

    r = await post_raw(project, raw, headers)

    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    if code == "invalid_signature":
        assert signature_failures() == before + 1
    assert await provider_events(db, project) == []
    assert (await balance(project, "u"))["total"] == 0
    assert await grants(project) == []
    assert (await payment(project, out["id"]))["status"] == "created"


@pytest.mark.parametrize("field", ["amount_total", "currency"])
async def test_a_payment_of_another_amount_or_currency_credits_nothing(
    project: Project, fake_stripe: FakeStripe, db: Database, field: str
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    [completed] = fake_stripe.pay(out["provider_reference"])
    crafted = copy.deepcopy(completed)
    crafted["data"]["object"][field] = 999 if field == "amount_total" else "eur"

    r = await deliver(project, fake_stripe, crafted)

    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "amount_mismatch"
    assert [(e.event_id, e.outcome) for e in await provider_events(db, project)] == [
        (completed["id"], "amount_mismatch")
    ]
    [event] = await event_types(project, "payment.amount_mismatch")
    assert event["user_id"] == "u"
    assert event["data"]["payment_id"] == out["id"]
    assert (await balance(project, "u"))["total"] == 0
    assert await grants(project) == []
    assert (await payment(project, out["id"]))["credits_granted"] == 0
    await assert_ledger_consistent(db)


# --- out of order --------------------------------------------------------------------------------


async def test_a_failure_reported_after_the_success_leaves_it_succeeded(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    session_id = out["provider_reference"]
    events = fake_stripe.pay_async(session_id, outcome="succeeded")
    # A late (or mistaken) failure for the same session, delivered last.
    events += fake_stripe.settle_async(session_id, succeeded=False)
    assert [e["type"] for e in events] == [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    ]

    outcomes = await deliver_all(project, fake_stripe, events)

    # completed (unpaid) → pending; the settlement credits; the failure would move it back.
    assert outcomes == ["applied", "applied", "stale"]
    got = await payment(project, out["id"])
    assert got["status"] == "succeeded"
    assert got["credits_granted"] == 100
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


@pytest.mark.parametrize(
    ("refund", "status", "left"), [(400, "partially_refunded", 60), (None, "refunded", 0)]
)
async def test_a_refund_delivered_before_the_success_is_applied_after_the_grant(
    project: Project,
    fake_stripe: FakeStripe,
    db: Database,
    refund: int | None,
    status: str,
    left: int,
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    session_id = out["provider_reference"]
    [completed] = fake_stripe.pay(session_id)
    [refunded] = fake_stripe.refund(intent_of(fake_stripe, session_id), refund)

    await deliver_all(project, fake_stripe, [refunded, completed])

    got = await payment(project, out["id"])
    assert got["status"] == status
    assert got["credits_granted"] == 100
    assert got["credits_clawed_back"] == 100 - left
    assert got["amount_refunded"] == Decimal(refund or 1000) / 100
    assert (await balance(project, "u"))["total"] == left
    [grant] = await grants(project)
    assert (grant["amount"], grant["remaining"]) == (100, left)
    await assert_ledger_consistent(db)


# --- refunds and disputes ------------------------------------------------------------------------


async def test_a_partial_refund_after_spending_takes_the_grants_share_and_leaves_debt(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    await project.price("m", 1000, 0)  # one credit per input token
    out, intent = await paid_top_up(project, fake_stripe)
    r = await project.post(
        "/v1/usage",
        {"user_id": "u", "model": "m", "tokens": {"input_tokens": 60, "output_tokens": 0}},
    )
    assert r.status_code in (200, 201), r.text
    # Given after the spend: nothing of it was spent and the refund must leave it alone.
    other = await project.grant("u", 20)
    assert (await balance(project, "u"))["total"] == 60

    # 70 % refunded: 70 credits come back out, 40 from the grant's rest and 30 as debt.
    assert await deliver_all(project, fake_stripe, fake_stripe.refund(intent, 700)) == ["applied"]

    assert (await balance(project, "u"))["total"] == -10
    by_id = {g["id"]: g for g in await grants(project)}
    assert by_id[other["id"]]["remaining"] == 20
    paid = next(g for g in by_id.values() if g["payment_id"] == out["id"])
    assert (paid["amount"], paid["remaining"]) == (100, 0)
    got = await payment(project, out["id"])
    assert (got["status"], got["credits_clawed_back"]) == ("partially_refunded", 70)
    assert got["amount_refunded"] == Decimal("7")
    assert [e["data"]["payment_id"] for e in await event_types(project, "payment.refunded")] == [
        out["id"]
    ]
    await assert_ledger_consistent(db)

    # The rest refunded: the other 30 credits become debt too; the other grant is still whole.
    assert await deliver_all(project, fake_stripe, fake_stripe.refund(intent)) == ["applied"]
    assert (await balance(project, "u"))["total"] == -40
    assert (await payment(project, out["id"]))["status"] == "refunded"
    assert {g["id"]: g["remaining"] for g in await grants(project)}[other["id"]] == 20
    await assert_ledger_consistent(db)


async def test_disputes_claw_back_restore_when_won_and_take_all_when_lost(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    first, first_intent = await paid_top_up(project, fake_stripe)
    second, second_intent = await paid_top_up(project, fake_stripe, amount="5.00", credits=50)
    assert (await balance(project, "u"))["total"] == 150

    opened = fake_stripe.open_dispute(first_intent)
    assert [e["type"] for e in opened] == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
    ]
    await deliver_all(project, fake_stripe, opened)
    got = await payment(project, first["id"])
    assert (got["status"], got["dispute_status"]) == ("disputed", "withdrawn")
    assert got["credits_clawed_back"] == 100
    assert (await balance(project, "u"))["total"] == 50
    await assert_ledger_consistent(db)

    dispute_id = opened[0]["data"]["object"]["id"]
    await deliver_all(project, fake_stripe, fake_stripe.close_dispute(dispute_id, won=True))
    got = await payment(project, first["id"])
    assert (got["status"], got["dispute_status"]) == ("won", "won")
    assert got["credits_clawed_back"] == 0
    assert (await balance(project, "u"))["total"] == 150
    assert len(await event_types(project, "credits.restored")) == 1
    await assert_ledger_consistent(db)

    lost = fake_stripe.open_dispute(second_intent)
    lost += fake_stripe.close_dispute(lost[0]["data"]["object"]["id"], won=False)
    await deliver_all(project, fake_stripe, lost)
    got = await payment(project, second["id"])
    assert (got["status"], got["dispute_status"], got["credits_clawed_back"]) == (
        "lost",
        "lost",
        50,
    )
    assert (await balance(project, "u"))["total"] == 100
    remaining = {g["payment_id"]: g["remaining"] for g in await grants(project)}
    assert remaining == {first["id"]: 100, second["id"]: 0}
    await assert_ledger_consistent(db)


# --- reconciliation ------------------------------------------------------------------------------


async def test_a_lost_webhook_is_reconciled_once_and_its_late_delivery_changes_nothing(
    project: Project, fake_stripe: FakeStripe, db: Database, app: FastAPI
) -> None:
    await configure(project, fake_stripe)
    out = await created(project)
    session_id = out["provider_reference"]
    [completed] = fake_stripe.pay(session_id)  # paid, but the webhook never arrives
    settings = app.state.settings
    later = utcnow() + timedelta(seconds=settings.payments.reconcile_after_seconds + 1)

    # Other tests' due payments may be claimed too: ours must be among them.
    for _ in range(50):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=later)
        if (await payment(project, out["id"]))["status"] != "created":
            break
    got = await payment(project, out["id"])
    assert (got["status"], got["credits_granted"]) == ("succeeded", 100)
    assert got["provider_payment_id"] == intent_of(fake_stripe, session_id)
    looked_up = [
        r for r in fake_stripe.requests if r.method == "GET" and r.path.endswith(session_id)
    ]
    assert looked_up, "reconciliation asked Stripe through the SDK"
    assert (await balance(project, "u"))["total"] == 100

    r = await deliver(project, fake_stripe, completed)
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False
    assert (await balance(project, "u"))["total"] == 100
    assert len(await grants(project)) == 1
    await assert_ledger_consistent(db)


# --- subscriptions -------------------------------------------------------------------------------


async def test_a_stripe_subscription_from_checkout_to_its_end(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    await configure(project, fake_stripe)
    await make_tier(project, "free", credits=0, is_default=True)
    await make_tier(project, "gold", credits=0)
    price_id = fake_stripe.add_price(999, "usd")
    await make_plan(project, "pro", tier_id="gold", stripe_price_id=price_id)
    await project.user("u")
    assert await user_tier(project, "u") == "free"

    r = await project.post(
        "/v1/users/u/subscriptions",
        {"plan_id": "pro", "provider": "stripe", "success_url": SUCCESS_URL},
    )
    assert r.status_code == 201, r.text
    started = body(r)
    sub_id = started["subscription"]["id"]
    assert started["subscription"]["status"] == "incomplete"
    [session_id] = fake_stripe.session_ids()
    assert started["checkout_url"] == f"https://checkout.stripe.com/c/pay/{session_id}"
    assert fake_stripe.session(session_id)["mode"] == "subscription"

    first = fake_stripe.complete_subscription_checkout(session_id)
    # customer.subscription.created says nothing the others do not.
    assert [e["type"] for e in first] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
        "invoice_payment.paid",
    ]
    assert await deliver_all(project, fake_stripe, first) == [
        "applied",
        "ignored",
        "applied",
        "applied",
    ]
    provider_sub = first[1]["data"]["object"]["id"]
    r = await project.get(f"/v1/subscriptions/{sub_id}")
    assert (body(r)["status"], body(r)["provider_subscription_id"]) == ("active", provider_sub)
    assert await user_tier(project, "u") == "gold"
    assert (await balance(project, "u"))["total"] == 100

    renewals = [fake_stripe.renew(provider_sub)[0] for _ in range(3)]
    assert await deliver_all(project, fake_stripe, renewals) == ["applied"] * 3
    assert (await balance(project, "u"))["total"] == 400
    periods = [g for g in await grants(project) if g["source"] == "subscription"]
    assert len(periods) == 4
    assert {(g["category"], g["cost_basis"], g["cost_currency"]) for g in periods} == {
        ("paid", Decimal("0.0999"), "USD")
    }
    assert all(g["payment_id"] for g in periods)

    # The same invoice.paid again: redelivered as is, and resent under a new event id.
    r = await deliver(project, fake_stripe, renewals[-1])
    assert r.json()["duplicate"] is True
    resent = {**copy.deepcopy(renewals[-1]), "id": "evt_resent_" + provider_sub}
    r = await deliver(project, fake_stripe, resent)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "duplicate": False, "outcome": "ignored"}
    assert (await balance(project, "u"))["total"] == 400
    r = await project.get("/v1/payments", params={"user_id": "u"})
    assert [p["kind"] for p in body(r)["data"]] == ["subscription"] * 4
    await assert_ledger_consistent(db)

    # Canceling through the API asks Stripe (through the SDK) to end it at the period's end.
    r = await project.post(f"/v1/subscriptions/{sub_id}/cancel", {"at_period_end": True})
    assert r.status_code == 200, r.text
    assert body(r)["cancel_at_period_end"] is True
    [asked] = [q for q in fake_stripe.requests if q.path == f"/v1/subscriptions/{provider_sub}"]
    assert (asked.method, asked.params) == ("POST", {"cancel_at_period_end": "true"})
    assert fake_stripe.subscription(provider_sub)["cancel_at_period_end"] is True
    assert await user_tier(project, "u") == "gold"

    # The period ends: Stripe deletes it and the user falls back to the default tier.
    assert await deliver_all(
        project, fake_stripe, fake_stripe.delete_subscription(provider_sub)
    ) == ["applied"]
    r = await project.get(f"/v1/subscriptions/{sub_id}")
    assert body(r)["status"] == "canceled"
    assert body(r)["ended_at"] is not None
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == 400, "paid credits are kept"
    await assert_ledger_consistent(db)


# --- refunds and disputes of subscription charges ------------------------------------------------
# Since API 2025-03-31 invoice.paid does not name the PaymentIntent; invoice_payment.paid does,
# and Stripe sends the two in no fixed order. Refunds and disputes name only the intent.

_IDENTIFIED = "invoice_payment.paid"


def _ordered(events: list[Any], order: str) -> list[Any]:
    if order == "identification_first":
        return sorted(events, key=lambda e: e["type"] != _IDENTIFIED)
    return events


async def _stripe_subscriber(project: Project, fake: FakeStripe, order: str) -> str:
    """User u subscribed to pro (100 credits a period) at the fake Stripe, first period
    received in ``order``; returns Stripe's subscription id."""
    await configure(project, fake)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", stripe_price_id=fake.add_price(999, "usd"))
    await project.user("u")
    r = await project.post(
        "/v1/users/u/subscriptions",
        {"plan_id": "pro", "provider": "stripe", "success_url": SUCCESS_URL},
    )
    assert r.status_code == 201, r.text
    [session_id] = fake.session_ids()
    events = fake.complete_subscription_checkout(session_id)
    await deliver_all(project, fake, _ordered(events, order))
    provider_sub: str = fake.session(session_id)["subscription"]
    return provider_sub


async def _period_payment(project: Project, invoice_id: str) -> Any:
    r = await project.get("/v1/payments", params={"user_id": "u"})
    [found] = [p for p in body(r)["data"] if p["provider_reference"] == invoice_id]
    return found


def _charge(events: list[Any]) -> tuple[str, str]:
    """(invoice id, payment intent) of a paid period's events."""
    [row] = [e["data"]["object"] for e in events if e["type"] == _IDENTIFIED]
    return row["invoice"], row["payment"]["payment_intent"]


# What each delivery of a renewal stores: invoice.paid then invoice_payment.paid.
_RENEWAL_OUTCOMES = {
    "invoice_first": ["applied", "applied"],
    "identification_first": ["unmatched", "applied"],  # in that delivery order
    "expanded": ["applied", "ignored"],  # invoice.paid already carried the intent
}


@pytest.mark.parametrize("order", sorted(_RENEWAL_OUTCOMES))
async def test_a_refunded_subscription_period_is_clawed_back_from_that_period_only(
    project: Project, fake_stripe: FakeStripe, db: Database, order: str
) -> None:
    fake_stripe.invoice_payments_in_events = order == "expanded"
    provider_sub = await _stripe_subscriber(project, fake_stripe, order)
    renewals = [fake_stripe.renew(provider_sub) for _ in range(2)]
    for events in renewals:
        delivered = _ordered(events, order)
        assert await deliver_all(project, fake_stripe, delivered) == _RENEWAL_OUTCOMES[order]
    assert (await balance(project, "u"))["total"] == 300
    # Every identification ends up applied (or ignored), none is left unmatched.
    outcomes = {t: o for _, t, o in await provider_events(db, project) if t == _IDENTIFIED}
    assert set(outcomes.values()) <= {"applied", "ignored"}
    for events in renewals:
        invoice_id, intent = _charge(events)
        assert (await _period_payment(project, invoice_id))["provider_payment_id"] == intent

    await project.price("m", 1000, 0)
    r = await project.post(
        "/v1/usage",
        {"user_id": "u", "model": "m", "tokens": {"input_tokens": 150, "output_tokens": 0}},
    )
    assert r.status_code in (200, 201), r.text
    before = {g["id"]: g["remaining"] for g in await grants(project)}

    invoice_id, intent = _charge(renewals[1])
    # 3.00 of the second renewal's 9.99 refunded: that share of its 100 credits comes back out.
    share = Decimal("30.030030")  # 100 x 300 / 999, half-up to 6 places
    assert await deliver_all(project, fake_stripe, fake_stripe.refund(intent, 300)) == ["applied"]

    refunded = await _period_payment(project, invoice_id)
    assert (refunded["status"], refunded["credits_clawed_back"]) == ("partially_refunded", share)
    assert refunded["amount_refunded"] == Decimal("3")
    after = {g["id"]: g for g in await grants(project)}
    [period] = [g for g in after.values() if g["payment_id"] == refunded["id"]]
    taken = before[period["id"]] - period["remaining"]
    assert taken == min(share, before[period["id"]])
    assert (await balance(project, "u"))["total"] == 300 - 150 - share
    for grant_id, remaining in before.items():
        if grant_id != period["id"]:
            assert after[grant_id]["remaining"] == remaining, "another period was touched"
    r = await project.get("/v1/payments", params={"user_id": "u"})
    others = [p for p in body(r)["data"] if p["id"] != refunded["id"]]
    assert len(others) == 2
    assert {(p["status"], p["credits_clawed_back"]) for p in others} == {("succeeded", 0)}
    await assert_ledger_consistent(db)


async def test_a_lost_dispute_of_a_subscription_period_takes_that_period_back(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    provider_sub = await _stripe_subscriber(project, fake_stripe, "identification_first")
    renewal = fake_stripe.renew(provider_sub)
    await deliver_all(project, fake_stripe, _ordered(renewal, "identification_first"))
    invoice_id, intent = _charge(renewal)
    assert (await balance(project, "u"))["total"] == 200

    opened = fake_stripe.open_dispute(intent)
    assert await deliver_all(project, fake_stripe, opened) == ["applied", "applied"]
    dispute_id = opened[0]["data"]["object"]["id"]
    disputed = await _period_payment(project, invoice_id)
    assert (disputed["status"], disputed["credits_clawed_back"]) == ("disputed", 100)
    lost = fake_stripe.close_dispute(dispute_id, won=False)
    assert await deliver_all(project, fake_stripe, lost) == ["applied"]

    disputed = await _period_payment(project, invoice_id)
    assert (disputed["status"], disputed["dispute_status"]) == ("lost", "lost")
    assert disputed["credits_clawed_back"] == 100
    assert (await balance(project, "u"))["total"] == 100
    [period] = [g for g in await grants(project) if g["payment_id"] == disputed["id"]]
    assert period["remaining"] == 0
    r = await project.get("/v1/payments", params={"user_id": "u"})
    [first] = [p for p in body(r)["data"] if p["id"] != disputed["id"]]
    assert (first["status"], first["credits_clawed_back"]) == ("succeeded", 0)
    await assert_ledger_consistent(db)


async def test_invoice_and_identification_delivered_at_once_still_tie_the_intent(
    project: Project, fake_stripe: FakeStripe, db: Database
) -> None:
    provider_sub = await _stripe_subscriber(project, fake_stripe, "invoice_first")
    renewals = [fake_stripe.renew(provider_sub) for _ in range(4)]
    for events in renewals:
        responses = await asyncio.gather(*(deliver(project, fake_stripe, e) for e in events))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for events in renewals:
        invoice_id, intent = _charge(events)
        assert (await _period_payment(project, invoice_id))["provider_payment_id"] == intent
    outcomes = [o for _, t, o in await provider_events(db, project) if t == _IDENTIFIED]
    assert outcomes == ["applied"] * 5
    assert (await balance(project, "u"))["total"] == 500
    await assert_ledger_consistent(db)


# --- the database unavailable --------------------------------------------------------------------


@dataclass
class Outage:
    pg: OwnServer
    app: FastAPI

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database


@pytest.fixture(scope="module")
def outage_pg() -> Iterator[OwnServer]:
    with own_server() as server:
        run_migrations(server.url)
        yield server


@pytest.fixture(scope="module")
async def outage(
    outage_pg: OwnServer, fake_stripe_server: FakeStripe, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Outage]:
    """creditd on a PostgreSQL server of its own that the test may stop."""
    settings = Settings(
        env="test",
        data_dir=Path(tmp_path_factory.mktemp("outage")),
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=outage_pg.url),
        api=ApiSettings(rate_limit_per_second=100_000, rate_limit_burst=100_000),
        payments=PaymentsSettings(stripe_api_base=fake_stripe_server.url),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield Outage(outage_pg, app)


async def test_a_webhook_during_a_database_outage_is_503_and_its_redelivery_grants_once(
    outage: Outage, fake_stripe: FakeStripe
) -> None:
    transport = httpx.ASGITransport(app=outage.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        project = await create_project(client, "outage")
        await configure(project, fake_stripe)
        out = await created(project)
        [completed] = fake_stripe.pay(out["provider_reference"])
        raw, headers = fake_stripe.sign(completed)

        await asyncio.to_thread(outage.pg.stop, "fast")
        try:
            down = await post_raw(project, raw, headers)
        finally:
            await asyncio.to_thread(outage.pg.start)
        assert down.status_code == 503, down.text
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["code"] == "database_unavailable"
        assert int(down.headers["Retry-After"]) >= 1

        # Stripe redelivers the same bytes until one is answered 2xx; the pool may need a
        # few tries to replace the connections the stop broke.
        for _ in range(50):
            r = await post_raw(project, raw, headers)
            if r.status_code != 503:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": True, "duplicate": False, "outcome": "applied"}
        r = await post_raw(project, raw, headers)
        assert r.json()["duplicate"] is True

        assert (await balance(project, "u"))["total"] == 100
        assert len(await grants(project)) == 1
        assert (await payment(project, out["id"]))["status"] == "succeeded"
        await assert_ledger_consistent(outage.db)
