"""Money charged on a provider subscription that buys no period: a one-off or proration
invoice, a charge in another currency than the plan's, a second charge for a granted period,
a charge for a deleted user. Each is recorded as a payment, grants nothing, and is reported
once to the operator as `subscription.charge_not_granted` with its reason."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import balance, body
from tests.payments.helpers import event_types
from tests.payments.stripe_helpers import SUCCESS_URL, configure, deliver_all
from tests.plans.test_plans import make_plan
from tests.plans.test_provider_subscriptions import (  # noqa: F401 - an autouse fixture
    _provider_subscription_id,
    active_on_gold,
    apply,
    get_sub,
    linked,
    paid,
    payment_count,
    start,
)

NOT_GRANTED = "subscription.charge_not_granted"


async def reports(project: Project) -> list[dict[str, Any]]:
    return [e["data"] for e in await event_types(project, NOT_GRANTED)]


async def subscription_payments(project: Project) -> list[dict[str, Any]]:
    r = await project.get("/v1/payments", params={"user_id": "u"})
    assert r.status_code == 200, r.text
    return [p for p in body(r)["data"] if p["kind"] == "subscription"]


async def stripe_subscriber(project: Project, fake: FakeStripe) -> str:
    """User u subscribed to pro through the fake Stripe, first period paid (100 credits);
    returns the Stripe subscription id."""
    await configure(project, fake)
    await make_plan(project, "pro", stripe_price_id=fake.add_price(999, "usd"))
    await project.user("u")
    r = await project.post(
        "/v1/users/u/subscriptions",
        {"plan_id": "pro", "provider": "stripe", "success_url": SUCCESS_URL},
    )
    assert r.status_code == 201, r.text
    [session_id] = fake.session_ids()
    first = fake.complete_subscription_checkout(session_id)
    assert await deliver_all(project, fake, first) == ["applied", "ignored", "applied", "applied"]
    assert (await balance(project, "u"))["total"] == 100
    provider_sub: str = first[1]["data"]["object"]["id"]
    return provider_sub


@pytest.mark.parametrize(
    ("billing_reason", "proration"),
    [("manual", False), ("subscription_update", True), ("subscription_cycle", True)],
)
async def test_a_paid_invoice_that_is_not_a_period_grants_nothing_and_is_reported(
    project: Project,
    fake_stripe: FakeStripe,
    db: Database,
    billing_reason: str,
    proration: bool,
) -> None:
    provider_sub = await stripe_subscriber(project, fake_stripe)
    events = fake_stripe.extra_invoice_paid(
        provider_sub, 1, billing_reason=billing_reason, proration=proration
    )
    invoice_id = events[0]["data"]["object"]["id"]
    # invoice_payment.paid then names the recorded payment's intent.
    assert await deliver_all(project, fake_stripe, events) == ["not_granted", "applied"]
    assert (await balance(project, "u"))["total"] == 100
    [charge] = [
        p for p in await subscription_payments(project) if p["provider_reference"] == invoice_id
    ]
    assert charge["status"] == "succeeded"
    assert Decimal(str(charge["amount"])) == Decimal("0.01")
    assert Decimal(str(charge["credits"])) == Decimal(str(charge["credits_granted"])) == 0
    [report] = await reports(project)
    assert report["reason"] == "not_a_period_invoice"
    assert (report["payment_id"], report["charge_id"]) == (charge["id"], invoice_id)
    # A redelivery under a new event id is a replay: nothing recorded or reported again.
    resent = {**events[0], "id": events[0]["id"] + "_again"}
    assert await deliver_all(project, fake_stripe, [resent]) == ["ignored"]
    assert len(await reports(project)) == 1
    assert len(await subscription_payments(project)) == 2
    await assert_ledger_consistent(db)


async def test_a_charge_in_another_currency_than_the_plans_grants_nothing_and_is_reported(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")  # 9.99 USD
    await project.user("u")
    sub_id, _ = await start(db, project, "u")
    await linked(db, project, sub_id)
    assert await apply(db, project, dataclasses.replace(paid(0), currency="EUR")) == "not_granted"
    assert (await balance(project, "u"))["total"] == 0
    assert (await get_sub(project, sub_id))["status"] == "incomplete"
    [charge] = await subscription_payments(project)
    assert charge["currency"] == "EUR"
    assert Decimal(str(charge["credits_granted"])) == 0
    [report] = await reports(project)
    assert (report["reason"], report["currency"]) == ("currency_mismatch", "EUR")
    await assert_ledger_consistent(db)


async def test_a_second_charge_for_a_granted_period_is_recorded_and_reported_once(
    project: Project, db: Database
) -> None:
    await active_on_gold(db, project)
    second = paid(0, charge="in_other")
    assert await apply(db, project, second) == "not_granted"
    assert await apply(db, project, second) == "ignored"
    assert (await balance(project, "u"))["total"] == 100
    assert await payment_count(db, project) == 2
    [report] = await reports(project)
    assert (report["reason"], report["charge_id"]) == ("period_already_granted", "in_other")
    await assert_ledger_consistent(db)


async def test_a_charge_for_a_deleted_user_is_recorded_and_reported(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    assert (await project.delete("/v1/users/u")).status_code == 204
    assert await apply(db, project, paid(1)) == "not_granted"
    assert await apply(db, project, paid(1)) == "ignored"
    assert await payment_count(db, project) == 2
    [report] = await reports(project)
    assert (report["reason"], report["subscription_id"]) == ("user_deleted", str(sub_id))
    await assert_ledger_consistent(db)


async def test_a_stripe_subscription_without_success_url_is_422_before_any_provider_call(
    project: Project, fake_stripe: FakeStripe
) -> None:
    await configure(project, fake_stripe)
    await make_plan(project, "pro", stripe_price_id=fake_stripe.add_price(999, "usd"))
    await project.user("u")
    r = await project.post("/v1/users/u/subscriptions", {"plan_id": "pro", "provider": "stripe"})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "validation_error"
    assert [e["loc"] for e in problem["errors"]] == [["body", "success_url"]]
    assert fake_stripe.session_ids() == []
    r = await project.get("/v1/users/u/subscriptions")
    assert r.status_code == 200, r.text
    assert body(r)["data"] == []
