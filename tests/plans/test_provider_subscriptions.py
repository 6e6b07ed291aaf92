"""Subscriptions through Stripe and Razorpay: started `incomplete` at the provider's checkout,
then driven by the provider's facts (linked, period paid, status changed) and canceled through
the provider.

Facts are applied directly, as the webhook receiver applies them after verifying a signature.
Stripe's starts and cancels go through the real adapter and the official SDK to the fake Stripe
(tests/fakes/stripe_server.py), whose subscriptions are completed and ended by its own signed
webhooks; Razorpay's go to `RecordingProvider`, a stand-in at the `PaymentProvider` seam.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from app.core.errors import AppError
from app.db.session import Database
from app.integrations import registry
from app.integrations.base import (
    AmountRule,
    Checkout,
    CheckoutRequest,
    Credentials,
    Fact,
    PaymentLookup,
    PaymentProvider,
    ProviderError,
    ProviderEvent,
    ProviderName,
    SubscriptionCheckoutRequest,
    SubscriptionFact,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionRef,
    SubscriptionStatus,
    SubscriptionStatusChanged,
)
from app.integrations.stripe import StripeProvider
from app.integrations.stripe.webhooks import (
    PROJECT_ID_KEY,
    SUBSCRIPTION_ID_KEY,
    USER_ID_KEY,
)
from app.plans import service as plans
from app.plans.exceptions import (
    PlanInactive,
    PlanNotAvailable,
    PlanNotFound,
    ProviderFailed,
    ProviderUnavailable,
    SubscriptionExists,
)
from app.plans.schemas import SubscriptionCreate
from app.users.exceptions import UserNotFound
from app.workers.runner import renew_subscriptions_once
from tests.conftest import Project, assert_ledger_consistent
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import balance, body
from tests.payments.stripe_helpers import configure, deliver_all
from tests.plans.test_plans import (
    allocation_rows,
    assert_problem,
    event_types,
    make_plan,
    subscribe,
    subscribed,
    user_tier,
)
from tests.tiers.test_tiers import make_tier

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The provider's id of the test's subscription. Unique per test: the database keeps provider
# subscription ids unique across projects, as the providers do.
SUB_A = "sub_A"


@pytest.fixture(autouse=True)
def _provider_subscription_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "SUB_A", f"sub_{uuid.uuid4().hex[:12]}")


@dataclass
class RecordingProvider:
    """Answers checkouts like a provider would and records every call; ``fail`` makes the
    next calls raise the given provider error."""

    name: ProviderName
    fail: ProviderError | None = None
    checkouts: list[SubscriptionCheckoutRequest] = field(default_factory=list)
    cancels: list[tuple[str, bool]] = field(default_factory=list)

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        assert creds.provider == self.name
        if self.fail is not None:
            raise self.fail
        self.checkouts.append(req)
        n = len(self.checkouts)
        if self.name == "stripe":
            return Checkout(url=f"https://checkout.stripe.test/c/cs_{n}", reference=f"cs_{n}")
        sid = SUB_A if n == 1 else f"{SUB_A}_{n}"
        return Checkout(url=f"https://rzp.test/i/{sid}", reference=sid, subscription_id=sid)

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None:
        if self.fail is not None:
            raise self.fail
        self.cancels.append((provider_subscription_id, at_period_end))

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        raise AssertionError("subscriptions never create one-off checkouts")

    def verify_webhook(
        self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
    ) -> None:
        raise AssertionError("not used here")

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        raise AssertionError("not used here")

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        raise AssertionError("not used here")

    def minor_units(self, currency: str) -> int | None:
        return registry.get(self.name).minor_units(currency)

    def amount_rule(self, currency: str) -> AmountRule | None:
        return registry.get(self.name).amount_rule(currency)


def creds(provider: ProviderName) -> Credentials:
    return Credentials(provider=provider, secret_key="sk_test_x", key_id="rzp_test_x")


@dataclass
class StripeAccount:
    """The test's account at the fake Stripe and the real adapter to reach it."""

    fake: FakeStripe
    impl: StripeProvider
    creds: Credentials
    name: ProviderName = "stripe"

    def sessions(self) -> list[str]:
        return self.fake.session_ids()

    def subscription_calls(self, provider_sub: str) -> list[tuple[str, Any]]:
        path = f"/v1/subscriptions/{provider_sub}"
        return [(q.method, q.params) for q in self.fake.requests if q.path == path]


@pytest.fixture
def stripe(fake_stripe: FakeStripe) -> StripeAccount:
    for price_id in ("price_pro", "price_old"):  # the plans' stripe_price_id in this file
        fake_stripe.add_price(999, "usd", price_id=price_id)
    account = Credentials(
        provider="stripe",
        secret_key=fake_stripe.secret_key,
        api_base=fake_stripe.url,
        timeout_seconds=5,
    )
    return StripeAccount(fake_stripe, StripeProvider(), account)


async def start(
    db: Database,
    project: Project,
    user_id: str,
    plan_id: str = "pro",
    provider: ProviderName = "stripe",
    impl: RecordingProvider | StripeAccount | None = None,
) -> tuple[uuid.UUID, str]:
    """Start a provider subscription (committed); returns its id and the checkout URL."""
    impl = impl or RecordingProvider(provider)
    provider_impl: PaymentProvider
    if isinstance(impl, StripeAccount):
        provider_impl, account = impl.impl, impl.creds
    else:
        provider_impl, account = impl, creds(provider)
    payload = SubscriptionCreate(
        plan_id=plan_id, provider=provider, success_url="https://example.com/ok"
    )
    async with db.transaction() as session:
        sub, url = await plans.start_provider_subscription(
            session, uuid.UUID(project.id), user_id, payload, provider_impl=provider_impl,
            creds=account,
        )  # fmt: skip
    return sub.id, url


async def apply(
    db: Database, project: Project, fact: SubscriptionFact, provider: ProviderName = "stripe"
) -> str:
    async with db.transaction() as session:
        return await plans.apply_subscription_fact(session, uuid.UUID(project.id), provider, fact)


def ref(sub_id: uuid.UUID | None = None, provider_id: str | None = None) -> SubscriptionRef:
    return SubscriptionRef(subscription_id=sub_id, provider_subscription_id=provider_id)


def paid(
    period: int, *, charge: str | None = None, amount_minor: int = 999, sub_id: str | None = None
) -> SubscriptionPeriodPaid:
    """The ``period``-th (0-based) monthly period of provider subscription ``sub_id``
    (default ``SUB_A``), paid."""
    sub_id = sub_id or SUB_A
    start = T0 + timedelta(days=30 * period)
    return SubscriptionPeriodPaid(
        ref=ref(provider_id=sub_id),
        charge_id=charge or f"in_{sub_id}_{period}",
        provider_payment_id=f"pi_{charge or f'{sub_id}_{period}'}",
        amount_minor=amount_minor,
        currency="USD",
        period_start=start,
        period_end=start + timedelta(days=30),
    )


def status(
    value: SubscriptionStatus, sub_id: str | None = None, **kw: Any
) -> SubscriptionStatusChanged:
    return SubscriptionStatusChanged(ref=ref(provider_id=sub_id or SUB_A), status=value, **kw)


async def linked(db: Database, project: Project, sub_id: uuid.UUID) -> None:
    fact = SubscriptionLinked(
        ref=SubscriptionRef(subscription_id=sub_id, reference="cs_1"),
        provider_subscription_id=SUB_A,
        provider_customer_id="cus_1",
    )
    assert await apply(db, project, fact) == "applied"


async def get_sub(project: Project, sub_id: uuid.UUID) -> dict[str, Any]:
    r = await project.get(f"/v1/subscriptions/{sub_id}")
    assert r.status_code == 200, r.text
    return dict(body(r))


async def paid_grants(db: Database, project: Project, user_id: str) -> list[Any]:
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT g.category, g.amount, g.cost_amount, g.cost_currency, p.provider_reference,"
                " p.grant_id = g.id AS linked, p.credits_granted, p.kind, p.subscription_id"
                " FROM grants g LEFT JOIN payments p"
                " ON p.project_id = g.project_id AND p.id = g.payment_id"
                " WHERE g.project_id = :p AND g.user_id = :u AND g.source = 'subscription'"
                " ORDER BY g.created_at, g.id"
            ),
            {"p": project.id, "u": user_id},
        )
        return list(rows.all())


async def payment_count(db: Database, project: Project) -> int:
    async with db.transaction() as session:
        found = await session.execute(
            text("SELECT count(*) FROM payments WHERE project_id = :p"), {"p": project.id}
        )
        return int(found.scalar_one())


async def subscription_count(db: Database, project: Project) -> int:
    async with db.transaction() as session:
        found = await session.execute(
            text("SELECT count(*) FROM subscriptions WHERE project_id = :p"), {"p": project.id}
        )
        return int(found.scalar_one())


async def active_on_gold(db: Database, project: Project) -> uuid.UUID:
    """User u (on tier basic) with an active Stripe subscription to pro (tier gold), first
    period paid: 100 credits."""
    await make_tier(project, "basic", credits=0)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", stripe_price_id="price_pro")
    await project.post("/v1/users", {"id": "u", "tier_id": "basic"})
    sub_id, _ = await start(db, project, "u")
    await linked(db, project, sub_id)
    assert await apply(db, project, paid(0)) == "applied"
    assert await user_tier(project, "u") == "gold"
    return sub_id


# --- starting ----------------------------------------------------------------------------------


async def test_stripe_start_is_incomplete_with_a_checkout_and_grants_nothing(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", stripe_price_id="price_pro")
    await project.user("u")
    sub_id, url = await start(db, project, "u", impl=stripe)
    [session_id] = stripe.sessions()
    assert url == f"https://checkout.stripe.com/c/pay/{session_id}"
    session = stripe.fake.session(session_id)
    assert (session["mode"], session["status"]) == ("subscription", "open")
    assert session["client_reference_id"] == str(sub_id)
    assert session["success_url"] == "https://example.com/ok"
    assert session["metadata"][SUBSCRIPTION_ID_KEY] == str(sub_id)
    assert session["metadata"][USER_ID_KEY] == "u"
    assert session["metadata"][PROJECT_ID_KEY] == project.id
    [req] = [q for q in stripe.fake.requests if q.path == "/v1/checkout/sessions"]
    assert req.params["line_items"] == [{"price": "price_pro", "quantity": "1"}]
    assert req.params["subscription_data"]["metadata"][SUBSCRIPTION_ID_KEY] == str(sub_id)
    sub = await get_sub(project, sub_id)
    assert sub["status"] == "incomplete"
    assert sub["provider"] == "stripe"
    assert sub["ended_at"] is None
    assert sub["current_period_start"] is None
    assert sub["provider_subscription_id"] is None
    assert (await balance(project, "u"))["total"] == 0
    assert await user_tier(project, "u") is None, "the tier moves with the first paid period"
    assert await allocation_rows(db, project, "u") == []
    assert "subscription.created" in await event_types(project, "u")


async def test_razorpay_start_knows_the_provider_subscription_at_once(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", razorpay_plan_id="plan_rzp")
    await project.user("u")
    impl = RecordingProvider("razorpay")
    sub_id, url = await start(db, project, "u", provider="razorpay", impl=impl)
    assert url == f"https://rzp.test/i/{SUB_A}"
    assert impl.checkouts[0].provider_plan == "plan_rzp"
    assert (await get_sub(project, sub_id))["provider_subscription_id"] == SUB_A


async def test_plan_without_the_providers_id_is_plan_not_available(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    await make_plan(project, "pro", razorpay_plan_id="plan_rzp")
    await project.user("u")
    with pytest.raises(PlanNotAvailable) as raised:
        await start(db, project, "u", impl=stripe)
    assert raised.value.status == 409
    assert raised.value.slug == "plan_not_available"
    assert stripe.fake.requests == []
    assert await subscription_count(db, project) == 0


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("no_user", UserNotFound),
        ("no_plan", PlanNotFound),
        ("inactive_plan", PlanInactive),
        ("running_manual", SubscriptionExists),
        ("running_incomplete", SubscriptionExists),
    ],
)
async def test_start_checks_user_plan_and_running_subscription_before_the_provider(
    project: Project, db: Database, setup: str, error: type[AppError], stripe: StripeAccount
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await make_plan(project, "old", stripe_price_id="price_old", active=False)
    if setup != "no_user":
        await project.user("u")
    if setup == "running_manual":
        await subscribed(project, "u")
    if setup == "running_incomplete":
        await start(db, project, "u", impl=stripe)
    before = await subscription_count(db, project)
    asked = len(stripe.fake.requests)
    plan_id = {"no_plan": "nope", "inactive_plan": "old"}.get(setup, "pro")
    with pytest.raises(error):
        await start(db, project, "u", plan_id, impl=stripe)
    assert len(stripe.fake.requests) == asked
    assert await subscription_count(db, project) == before


@pytest.mark.parametrize(
    ("transient", "error"), [(True, ProviderUnavailable), (False, ProviderFailed)]
)
async def test_a_provider_failure_at_start_creates_nothing(
    project: Project, db: Database, transient: bool, error: type[AppError], stripe: StripeAccount
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    # A 5xx is retried twice by the SDK before it gives up; a 400 is a refusal at once.
    stripe.fake.fail_next(3 if transient else 1, status=500 if transient else 400)
    with pytest.raises(error) as raised:
        await start(db, project, "u", impl=stripe)
    assert raised.value.status == (503 if transient else 502)
    assert stripe.sessions() == []
    assert await subscription_count(db, project) == 0
    assert "subscription.created" not in await event_types(project, "u")


async def test_a_provider_start_blocks_a_manual_one_and_the_reverse(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    await start(db, project, "u", impl=stripe)
    assert_problem(await subscribe(project, "u"), 409, "subscription_exists")
    assert await subscription_count(db, project) == 1


async def test_subscription_create_with_a_bad_redirect_url_is_422(project: Project) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    for url in ("javascript:alert(1)", "example.com/ok", "https://x" + "y" * 2048):
        r = await project.post(
            "/v1/users/u/subscriptions",
            {"plan_id": "pro", "provider": "stripe", "success_url": url},
        )
        assert_problem(r, 422, "validation_error")


async def test_http_start_without_the_provider_configured_is_409_and_creates_nothing(
    project: Project, db: Database
) -> None:
    """Needs app.providers (credentials) and the adapters' registry."""
    await make_plan(project, "pro", stripe_price_id="price_1", razorpay_plan_id="plan_1")
    await project.user("u")
    for provider in ("stripe", "razorpay"):
        assert_problem(await subscribe(project, "u", provider=provider), 409,
                       "provider_not_configured")  # fmt: skip
    assert await subscription_count(db, project) == 0


async def test_http_start_of_a_plan_without_the_providers_id_is_409_plan_not_available(
    project: Project, db: Database
) -> None:
    """Needs PUT /v1/providers/stripe (providers helper) and the adapters' registry."""
    r = await project.put(
        "/v1/providers/stripe", {"secret_key": "sk_test_123", "webhook_secret": "whsec_123"}
    )
    assert r.status_code == 200, r.text
    await make_plan(project, "pro", razorpay_plan_id="plan_1")
    await project.user("u")
    assert_problem(await subscribe(project, "u", provider="stripe"), 409, "plan_not_available")
    assert await subscription_count(db, project) == 0


# --- facts -------------------------------------------------------------------------------------


async def test_three_renewals_grant_three_paid_periods(project: Project, db: Database) -> None:
    sub_id = await active_on_gold(db, project)
    assert await apply(db, project, paid(1)) == "applied"
    assert await apply(db, project, paid(2)) == "applied"
    assert (await balance(project, "u"))["total"] == 300
    assert len(await allocation_rows(db, project, "u")) == 3
    grants = await paid_grants(db, project, "u")
    assert [g.category for g in grants] == ["paid"] * 3
    assert [g.provider_reference for g in grants] == [f"in_{SUB_A}_{n}" for n in range(3)]
    assert all(g.linked and g.credits_granted == 100 for g in grants)
    assert all(g.kind == "subscription" and g.subscription_id == sub_id for g in grants)
    assert {(g.cost_amount, g.cost_currency) for g in grants} == {(Decimal("9.99"), "USD")}
    sub = await get_sub(project, sub_id)
    assert sub["status"] == "active"
    assert datetime.fromisoformat(sub["current_period_start"]) == T0 + timedelta(days=60)
    assert datetime.fromisoformat(sub["current_period_end"]) == T0 + timedelta(days=90)
    assert sub["provider_subscription_id"] == SUB_A
    types = await event_types(project, "u")
    assert types.count("subscription.activated") == 1
    assert types.count("subscription.renewed") == 2
    assert types.count("credits.granted") == 3
    assert await user_tier(project, "u") == "gold"
    await assert_ledger_consistent(db)


async def test_a_replayed_charge_grants_nothing(project: Project, db: Database) -> None:
    await active_on_gold(db, project)
    assert await apply(db, project, paid(0)) == "ignored"
    assert (await balance(project, "u"))["total"] == 100
    assert await payment_count(db, project) == 1
    assert len(await allocation_rows(db, project, "u")) == 1
    await assert_ledger_consistent(db)


async def test_concurrent_deliveries_of_one_charge_grant_once(
    project: Project, db: Database
) -> None:
    await active_on_gold(db, project)
    outcomes = await asyncio.gather(*(apply(db, project, paid(1)) for _ in range(10)))
    assert sorted(outcomes) == ["applied"] + ["ignored"] * 9
    assert (await balance(project, "u"))["total"] == 200
    assert await payment_count(db, project) == 2
    assert len(await allocation_rows(db, project, "u")) == 2
    await assert_ledger_consistent(db)


async def test_a_second_charge_for_a_granted_period_grants_nothing(
    project: Project, db: Database
) -> None:
    await active_on_gold(db, project)
    # Recorded and reported: tests/plans/test_subscription_charges.py
    assert await apply(db, project, paid(0, charge="in_other")) == "not_granted"
    assert (await balance(project, "u"))["total"] == 100
    assert len(await allocation_rows(db, project, "u")) == 1
    await assert_ledger_consistent(db)


async def test_an_out_of_order_older_period_is_granted_without_moving_the_period_back(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    assert await apply(db, project, paid(2)) == "applied"
    assert await apply(db, project, paid(1)) == "applied"
    assert (await balance(project, "u"))["total"] == 300
    sub = await get_sub(project, sub_id)
    assert datetime.fromisoformat(sub["current_period_start"]) == T0 + timedelta(days=60)


async def test_a_zero_charge_grants_the_period_as_promotional_credits(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    sub_id, _ = await start(db, project, "u")
    await linked(db, project, sub_id)
    assert await apply(db, project, paid(0, amount_minor=0)) == "applied"
    assert await apply(db, project, paid(0, amount_minor=0)) == "ignored"
    assert (await balance(project, "u"))["total"] == 100
    assert [g.category for g in await paid_grants(db, project, "u")] == ["promotional"]
    assert await payment_count(db, project) == 0
    assert (await get_sub(project, sub_id))["status"] == "active"


async def test_linking_stores_the_ids_and_leaves_it_incomplete(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    sub_id, _ = await start(db, project, "u")
    by_checkout = SubscriptionLinked(
        ref=SubscriptionRef(reference="cs_1"), provider_subscription_id=SUB_A
    )
    assert await apply(db, project, by_checkout) == "applied"
    assert await apply(db, project, by_checkout) == "ignored"
    sub = await get_sub(project, sub_id)
    assert (sub["status"], sub["provider_subscription_id"]) == ("incomplete", SUB_A)
    assert (await balance(project, "u"))["total"] == 0


async def test_a_first_invoice_paid_before_the_checkout_event_links_and_activates(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    sub_id, _ = await start(db, project, "u")
    first = dataclasses.replace(paid(0), ref=ref(sub_id, SUB_A))
    assert await apply(db, project, first) == "applied"
    sub = await get_sub(project, sub_id)
    assert (sub["status"], sub["provider_subscription_id"]) == ("active", SUB_A)
    await linked(db, project, sub_id)
    assert await apply(db, project, paid(1)) == "applied"
    assert (await balance(project, "u"))["total"] == 200


async def test_past_due_then_paid_is_active_again(project: Project, db: Database) -> None:
    sub_id = await active_on_gold(db, project)
    assert await apply(db, project, status("past_due")) == "applied"
    assert await apply(db, project, status("past_due")) == "ignored"
    assert (await get_sub(project, sub_id))["status"] == "past_due"
    assert await user_tier(project, "u") == "gold", "the provider still retries"
    assert await apply(db, project, paid(1)) == "applied"
    assert (await get_sub(project, sub_id))["status"] == "active"
    assert (await balance(project, "u"))["total"] == 200
    types = await event_types(project, "u")
    assert types.count("subscription.past_due") == 1
    assert "subscription.renewed" in types


async def test_past_due_then_active_status_recovers(project: Project, db: Database) -> None:
    sub_id = await active_on_gold(db, project)
    await apply(db, project, status("past_due"))
    assert await apply(db, project, status("active")) == "applied"
    assert (await get_sub(project, sub_id))["status"] == "active"


async def test_halted_ends_it_and_moves_the_user_to_the_default_tier(
    project: Project, db: Database
) -> None:
    await make_tier(project, "free", credits=0, is_default=True)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", razorpay_plan_id="plan_rzp")
    await project.post("/v1/users", {"id": "u"})
    assert await user_tier(project, "u") == "free"
    sub_id, _ = await start(db, project, "u", provider="razorpay")
    assert await apply(db, project, paid(0), "razorpay") == "applied"
    assert await user_tier(project, "u") == "gold"
    assert await apply(db, project, status("past_due"), "razorpay") == "applied"
    assert await apply(db, project, status("halted"), "razorpay") == "applied"
    sub = await get_sub(project, sub_id)
    assert sub["status"] == "canceled"
    assert sub["ended_at"] is not None
    assert await user_tier(project, "u") == "free"
    assert (await balance(project, "u"))["total"] == 100, "credits are kept"
    assert "subscription.ended" in await event_types(project, "u")
    await assert_ledger_consistent(db)


async def test_ended_restores_the_previous_tier(project: Project, db: Database) -> None:
    sub_id = await active_on_gold(db, project)
    assert await apply(db, project, status("ended")) == "applied"
    assert (await get_sub(project, sub_id))["status"] == "canceled"
    assert await user_tier(project, "u") == "basic"


async def test_status_facts_after_the_end_are_stale(project: Project, db: Database) -> None:
    sub_id = await active_on_gold(db, project)
    await apply(db, project, status("ended"))
    ended = await get_sub(project, sub_id)
    for value in ("active", "past_due", "halted", "ended"):
        assert await apply(db, project, status(value)) == "stale"
    assert await get_sub(project, sub_id) == ended
    assert await user_tier(project, "u") == "basic"


async def test_money_charged_after_the_end_is_credited_without_reviving_it(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    await apply(db, project, status("ended"))
    assert await apply(db, project, paid(1)) == "applied"
    assert (await balance(project, "u"))["total"] == 200
    assert (await get_sub(project, sub_id))["status"] == "canceled"
    assert await user_tier(project, "u") == "basic"
    await assert_ledger_consistent(db)


async def test_canceled_at_period_end_at_the_provider_only_sets_the_flag(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    fact = status("canceled", cancel_at_period_end=True)
    assert await apply(db, project, fact) == "applied"
    sub = await get_sub(project, sub_id)
    assert (sub["status"], sub["cancel_at_period_end"]) == ("active", True)
    assert sub["canceled_at"] is not None
    assert sub["ended_at"] is None
    assert await apply(db, project, status("active", cancel_at_period_end=False)) == "applied"
    assert (await get_sub(project, sub_id))["cancel_at_period_end"] is False


async def test_unknown_subscriptions_are_unmatched(project: Project, db: Database) -> None:
    await active_on_gold(db, project)
    assert await apply(db, project, paid(1, sub_id="sub_nope")) == "unmatched"
    assert await apply(db, project, status("halted", "sub_nope")) == "unmatched"
    assert await apply(db, project, paid(1), provider="razorpay") == "unmatched"
    assert (await balance(project, "u"))["total"] == 100


async def test_a_fact_naming_another_provider_subscription_is_unmatched(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    forged = SubscriptionPeriodPaid(
        ref=ref(sub_id, "sub_other"), charge_id="in_x", provider_payment_id="pi_x",
        amount_minor=999, currency="USD", period_start=T0 + timedelta(days=30),
        period_end=T0 + timedelta(days=60),
    )  # fmt: skip
    assert await apply(db, project, forged) == "unmatched"
    assert (await balance(project, "u"))["total"] == 100


async def test_another_projects_facts_never_match(
    project: Project, other_project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)
    by_our_id = SubscriptionStatusChanged(ref=ref(sub_id), status="halted")
    assert await apply(db, other_project, by_our_id) == "unmatched"
    assert await apply(db, other_project, paid(1)) == "unmatched"
    assert (await get_sub(project, sub_id))["status"] == "active"
    assert (await balance(project, "u"))["total"] == 100


async def test_the_manual_renewal_worker_ignores_provider_subscriptions(
    project: Project, db: Database
) -> None:
    sub_id = await active_on_gold(db, project)  # its period (January 2026) is long over
    before = await get_sub(project, sub_id)
    assert datetime.fromisoformat(before["current_period_end"]) < datetime.now(UTC)
    await renew_subscriptions_once(db, batch_size=100)
    assert await get_sub(project, sub_id) == before
    assert (await balance(project, "u"))["total"] == 100
    assert len(await allocation_rows(db, project, "u")) == 1


# --- canceling ---------------------------------------------------------------------------------


async def cancel(
    db: Database,
    project: Project,
    sub_id: uuid.UUID,
    impl: RecordingProvider | StripeAccount,
    *,
    now: bool,
) -> dict[str, Any]:
    provider_impl: PaymentProvider
    if isinstance(impl, StripeAccount):
        provider_impl, account = impl.impl, impl.creds
    else:
        provider_impl, account = impl, creds(impl.name)
    async with db.transaction() as session:
        sub = await plans.cancel(
            session, uuid.UUID(project.id), sub_id, at_period_end=not now,
            provider_impl=provider_impl, creds=account,
        )  # fmt: skip
        return plans.subscription_out(sub).model_dump()


async def active_at_stripe(
    db: Database, project: Project, stripe: StripeAccount
) -> tuple[uuid.UUID, str]:
    """User u (on tier basic) subscribed to pro (tier gold) at the fake Stripe: checkout
    completed and its signed webhooks received. Returns ours and Stripe's subscription ids."""
    await configure(project, stripe.fake)
    await make_tier(project, "basic", credits=0)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", stripe_price_id="price_pro")
    await project.post("/v1/users", {"id": "u", "tier_id": "basic"})
    sub_id, _ = await start(db, project, "u", impl=stripe)
    [session_id] = stripe.sessions()
    events = stripe.fake.complete_subscription_checkout(session_id)
    await deliver_all(project, stripe.fake, events)
    provider_sub: str = stripe.fake.session(session_id)["subscription"]
    assert (await get_sub(project, sub_id))["status"] == "active"
    assert await user_tier(project, "u") == "gold"
    return sub_id, provider_sub


async def test_cancel_now_cancels_at_the_provider_and_ends_it_here(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    sub_id, provider_sub = await active_at_stripe(db, project, stripe)
    sub = await cancel(db, project, sub_id, stripe, now=True)
    assert stripe.subscription_calls(provider_sub) == [("DELETE", {})]
    assert stripe.fake.subscription(provider_sub)["status"] == "canceled"
    assert sub["status"] == "canceled"
    assert sub["ended_at"] is not None
    assert await user_tier(project, "u") == "basic"
    [deleted] = [e for e in stripe.fake.events if e["type"] == "customer.subscription.deleted"]
    assert await deliver_all(project, stripe.fake, [deleted]) == ["stale"], "Stripe's own event"
    assert "subscription.canceled" in await event_types(project, "u")
    await assert_ledger_consistent(db)


async def test_cancel_at_period_end_asks_the_provider_and_its_event_ends_it(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    sub_id, provider_sub = await active_at_stripe(db, project, stripe)
    sub = await cancel(db, project, sub_id, stripe, now=False)
    assert stripe.subscription_calls(provider_sub) == [("POST", {"cancel_at_period_end": "true"})]
    assert stripe.fake.subscription(provider_sub)["cancel_at_period_end"] is True
    assert (sub["status"], sub["cancel_at_period_end"], sub["ended_at"]) == ("active", True, None)
    await cancel(db, project, sub_id, stripe, now=False)
    assert len(stripe.subscription_calls(provider_sub)) == 1, (
        "already set to end: the provider is not asked again"
    )
    assert await user_tier(project, "u") == "gold"
    ended = stripe.fake.delete_subscription(provider_sub)
    assert await deliver_all(project, stripe.fake, ended) == ["applied"]
    assert (await get_sub(project, sub_id))["status"] == "canceled"
    assert await user_tier(project, "u") == "basic"
    await assert_ledger_consistent(db)


async def test_canceling_an_unpaid_checkout_ends_it_without_calling_the_provider(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    await make_plan(project, "pro", stripe_price_id="price_pro")
    await project.user("u")
    sub_id, _ = await start(db, project, "u", impl=stripe)
    asked = len(stripe.fake.requests)
    sub = await cancel(db, project, sub_id, stripe, now=False)
    assert len(stripe.fake.requests) == asked
    assert sub["status"] == "canceled"
    assert sub["ended_at"] is not None
    await start(db, project, "u", impl=stripe)  # a new checkout may start now
    assert len(stripe.sessions()) == 2


async def test_canceling_an_unpaid_razorpay_subscription_cancels_it_there_now(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", razorpay_plan_id="plan_rzp")
    await project.user("u")
    sub_id, _ = await start(db, project, "u", provider="razorpay")
    impl = RecordingProvider("razorpay")
    sub = await cancel(db, project, sub_id, impl, now=False)
    assert impl.cancels == [(SUB_A, False)]
    assert sub["ended_at"] is not None


async def test_a_provider_failure_on_cancel_changes_nothing(
    project: Project, db: Database, stripe: StripeAccount
) -> None:
    sub_id, provider_sub = await active_at_stripe(db, project, stripe)
    before = await get_sub(project, sub_id)
    stripe.fake.fail_next(3, status=503)  # the first try and the SDK's two retries
    with pytest.raises(ProviderUnavailable):
        await cancel(db, project, sub_id, stripe, now=True)
    assert await get_sub(project, sub_id) == before
    assert await user_tier(project, "u") == "gold"
    assert stripe.fake.subscription(provider_sub)["status"] == "active"
