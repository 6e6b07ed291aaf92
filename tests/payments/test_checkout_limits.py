"""Top-up edges a review found: a Stripe checkout needs a success_url (422, not 500); checkouts
stop being payable when reconciliation gives up; reconciliation expires a payment only on the
provider's word; a Razorpay body re-posted under a new event id is a duplicate; a payment id
learned after the success is applied."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI

from app.core.clock import utcnow
from app.db.session import Database
from app.integrations.base import CheckoutRequest, Credentials
from app.integrations.razorpay.provider import LINK_MIN_LIFETIME, link_expiry
from app.integrations.stripe import StripeProvider
from app.integrations.stripe.client import session_expiry
from app.payments import reconcile
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.razorpay_server import Delivery, FakeRazorpay
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import balance
from tests.payments.helpers import event_types
from tests.payments.stripe_helpers import SUCCESS_URL, top_up
from tests.payments.stripe_helpers import configure as configure_stripe
from tests.payments.test_razorpay_flow import (
    _with,
    assert_paid_once,
    configure,
    delivered,
    events_stored,
    payment,
    payments_stored,
)
from tests.payments.test_razorpay_flow import top_up as razorpay_top_up

T0 = datetime(2026, 6, 1, tzinfo=UTC)

# --- success_url ------------------------------------------------------------------------------


async def test_a_stripe_top_up_without_success_url_is_422_and_asks_stripe_nothing(
    project: Project, fake_stripe: FakeStripe
) -> None:
    await configure_stripe(project, fake_stripe)
    r = await top_up(project, credits=100, success_url=None)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_error"
    assert [e["loc"] for e in problem["errors"]] == [["body", "success_url"]]
    assert fake_stripe.session_ids() == []
    assert await payments_stored(project) == []


# --- checkouts expire when reconciliation gives up ------------------------------------------


def test_a_stripe_session_expires_with_reconciliation_only_inside_stripes_window() -> None:
    assert session_expiry(None, now=T0) is None
    assert session_expiry(T0 + timedelta(hours=2), now=T0) == int(
        (T0 + timedelta(hours=2)).timestamp()
    )
    assert session_expiry(T0 + timedelta(hours=24), now=T0) is not None
    # Outside 30 min - 24 h Stripe refuses it: its own default (24 h) stands.
    assert session_expiry(T0 + timedelta(minutes=30), now=T0) is None
    assert session_expiry(T0 + timedelta(hours=24, seconds=1), now=T0) is None
    assert session_expiry(T0 + timedelta(days=7), now=T0) is None


def test_a_razorpay_link_expires_with_reconciliation_at_least_its_minimum_ahead() -> None:
    assert link_expiry(None, now=T0) is None
    week = T0 + timedelta(days=7)
    assert link_expiry(week, now=T0) == int(week.timestamp())
    assert link_expiry(T0 + timedelta(minutes=1), now=T0) == int(
        (T0 + LINK_MIN_LIFETIME).timestamp()
    )


async def test_a_razorpay_link_is_not_payable_after_reconciliation_gives_up(
    project: Project, fake_razorpay: FakeRazorpay, app: FastAPI
) -> None:
    await configure(project, fake_razorpay)
    before = utcnow()
    created = await razorpay_top_up(project)
    after = utcnow()
    give_up = timedelta(seconds=app.state.settings.payments.reconcile_give_up_seconds)
    expire_by = fake_razorpay.links[created["provider_reference"]]["expire_by"]
    assert int((before + give_up).timestamp()) <= expire_by <= int((after + give_up).timestamp())


async def test_a_stripe_session_takes_an_expiry_inside_its_window_and_not_outside(
    fake_stripe: FakeStripe,
) -> None:
    creds = Credentials(
        provider="stripe", secret_key=fake_stripe.secret_key, api_base=fake_stripe.url
    )
    impl = StripeProvider()

    def request(expires_at: datetime) -> CheckoutRequest:
        return CheckoutRequest(
            payment_id=uuid.uuid4(),
            project_id=uuid.uuid4(),
            user_id="u",
            amount_minor=1000,
            currency="USD",
            credits=Decimal(100),
            description="100 credits",
            success_url=SUCCESS_URL,
            cancel_url=None,
            expires_at=expires_at,
        )

    in_two_hours = utcnow() + timedelta(hours=2)
    short = await impl.create_checkout(creds, request(in_two_hours))
    assert fake_stripe.session(short.reference)["expires_at"] == int(in_two_hours.timestamp())
    week = await impl.create_checkout(creds, request(utcnow() + timedelta(days=7)))
    [asked] = [q for q in fake_stripe.requests if q.path == "/v1/checkout/sessions"][-1:]
    assert "expires_at" not in asked.params
    assert fake_stripe.session(week.reference)["expires_at"] <= int(
        (utcnow() + timedelta(hours=24)).timestamp()
    )


# --- reconciliation that never hears from the provider --------------------------------------


async def _reconcile_until(
    db: Database, app: FastAPI, done: Any, *, at: datetime, rounds: int = 50
) -> None:
    settings = app.state.settings
    for _ in range(rounds):
        await reconcile.reconcile_once(db, settings, batch_size=100, now=at)
        if await done():
            return


@pytest.mark.parametrize("failure", ["provider_error", "provider_not_configured"])
async def test_failed_lookups_never_expire_a_payment_and_are_reported_once_at_give_up(
    project: Project,
    fake_razorpay: FakeRazorpay,
    db: Database,
    app: FastAPI,
    failure: str,
) -> None:
    await configure(project, fake_razorpay)
    created = await razorpay_top_up(project)
    link_id = created["provider_reference"]
    paid_unheard = fake_razorpay.pay(link_id)  # paid; its webhooks are late
    if failure == "provider_error":
        fake_razorpay.fail_next(10_000, status=500)
    else:
        assert (await project.delete("/v1/providers/razorpay")).status_code == 204
    settings = app.state.settings.payments

    async def reported() -> bool:
        return bool(await event_types(project, "payment.reconciliation_failed"))

    give_up = utcnow() + timedelta(seconds=settings.reconcile_give_up_seconds + 1)
    await _reconcile_until(db, app, reported, at=give_up)
    [event] = await event_types(project, "payment.reconciliation_failed")
    assert (event["data"]["payment_id"], event["data"]["reason"]) == (created["id"], failure)
    assert (await payment(project, created["id"]))["status"] == "created"
    assert await event_types(project, "payment.expired") == []

    # No more lookups and no second report.
    asked = len(fake_razorpay.requests)
    await reconcile.reconcile_once(
        db, app.state.settings, batch_size=100, now=give_up + timedelta(days=1)
    )
    assert not any(r.path.endswith(link_id) for r in fake_razorpay.requests[asked:])
    assert len(await event_types(project, "payment.reconciliation_failed")) == 1

    if failure == "provider_error":
        # The money still counts when its webhook turns up.
        assert (await delivered(project, paid_unheard[0]))["outcome"] == "applied"
        await assert_paid_once(project, db, created["id"], 100)


# --- Razorpay deliveries are deduplicated by their body too ---------------------------------


async def test_a_signed_razorpay_body_reposted_under_a_new_event_id_is_a_duplicate(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await razorpay_top_up(project)
    link_paid = fake_razorpay.pay(created["provider_reference"])[0]
    assert (await delivered(project, link_paid))["outcome"] == "applied"
    stored = await events_stored(db, project)
    replay = _with(link_paid, **{"x-razorpay-event-id": "evt_" + uuid.uuid4().hex[:14]})
    assert (await delivered(project, replay))["duplicate"] is True
    assert await events_stored(db, project) == stored
    await assert_paid_once(project, db, created["id"], 100)


# --- a payment id learned after the success -------------------------------------------------


async def test_the_payment_id_after_a_link_paid_without_its_payment_is_applied(
    project: Project, fake_razorpay: FakeRazorpay, db: Database
) -> None:
    await configure(project, fake_razorpay)
    created = await razorpay_top_up(project)
    link_paid, captured, _ = fake_razorpay.pay(created["provider_reference"])
    entities = link_paid.payload["payload"]
    bare: Delivery = fake_razorpay.event(
        "payment_link.paid",
        payment_link=entities["payment_link"]["entity"],
        order=entities["order"]["entity"],
    )
    assert (await delivered(project, bare))["outcome"] == "applied"
    assert (await payment(project, created["id"]))["provider_payment_id"] is None
    assert (await delivered(project, captured))["outcome"] == "applied"
    pay_id = captured.payload["payload"]["payment"]["entity"]["id"]
    assert (await payment(project, created["id"]))["provider_payment_id"] == pay_id
    assert await event_types(project, "payment.conflict") == []
    assert (await balance(project, "u"))["total"] == 100
    await assert_ledger_consistent(db)
