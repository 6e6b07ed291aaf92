"""The Stripe adapter: the official SDK against the fake Stripe, and webhooks signed for real."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe

from app.integrations.base import (
    CheckoutRequest,
    Credentials,
    DisputeChanged,
    InvalidSignature,
    MalformedWebhook,
    PaymentExpired,
    PaymentFailed,
    PaymentIdentified,
    PaymentLookup,
    PaymentPending,
    PaymentRef,
    PaymentRefunded,
    PaymentSucceeded,
    ProviderError,
    SubscriptionCheckoutRequest,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionRef,
    SubscriptionStatusChanged,
)
from app.integrations.stripe import PROVIDER, StripeProvider
from app.integrations.stripe.client import API_VERSION
from app.integrations.stripe.webhooks import signature_header
from tests.fakes.stripe_server import FakeStripe, sign_event

# stripe 16.1's HTTPX client posts its form body as ``data=<str>``, which httpx deprecates.

T0 = 1_790_000_000  # a fixed signing time
NOW = datetime.fromtimestamp(T0, tz=UTC)
# No SDK retries unless a test asks: a failure is seen as it happened.
NO_RETRY = StripeProvider(max_network_retries=0)


@pytest.fixture
def creds(fake_stripe: FakeStripe) -> Credentials:
    return Credentials(
        provider="stripe", secret_key=fake_stripe.secret_key, api_base=fake_stripe.url
    )


def checkout_request(**overrides: Any) -> CheckoutRequest:
    fields: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "user_id": "user-1",
        "amount_minor": 1999,
        "currency": "USD",
        "credits": Decimal("2000"),
        "description": "2000 credits",
        "success_url": "https://app.example/paid",
        "cancel_url": "https://app.example/cancel",
        "metadata": {"campaign": "spring"},
        "idempotency_key": None,
    }
    fields.update(overrides)
    return CheckoutRequest(**fields)


def subscription_request(price: str, **overrides: Any) -> SubscriptionCheckoutRequest:
    fields: dict[str, Any] = {
        "subscription_id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "user_id": "user-1",
        "plan_id": "pro",
        "provider_plan": price,
        "success_url": "https://app.example/subscribed",
        "cancel_url": None,
    }
    fields.update(overrides)
    return SubscriptionCheckoutRequest(**fields)


def parse(event: dict[str, Any]) -> list[Any]:
    """Facts of one event as a delivery carries it (signed bytes, verified first)."""
    body, headers = sign_event(event, "whsec_test", T0)
    PROVIDER.verify_webhook(body, headers, ["whsec_test"], now=NOW)
    return list(PROVIDER.parse_webhook(body, headers).facts)


async def paid_session(fake: FakeStripe, creds: Credentials, **overrides: Any) -> tuple[str, str]:
    """A payment-mode session paid by card; returns (session id, payment intent id)."""
    checkout = await PROVIDER.create_checkout(creds, checkout_request(**overrides))
    fake.pay(checkout.reference)
    return checkout.reference, fake.session(checkout.reference)["payment_intent"]


async def subscribed(fake: FakeStripe, creds: Credentials) -> tuple[uuid.UUID, list[Any]]:
    """A completed subscription checkout; returns (our subscription id, its events)."""
    req = subscription_request(fake.add_price(2500, "eur"))
    checkout = await PROVIDER.create_subscription_checkout(creds, req)
    return req.subscription_id, fake.complete_subscription_checkout(checkout.reference)


# --- the module ------------------------------------------------------------------------------


def test_module_exposes_one_stripe_provider() -> None:
    assert isinstance(PROVIDER, StripeProvider)
    assert PROVIDER.name == "stripe"


def test_api_version_is_the_one_the_sdk_ships() -> None:
    # A new SDK brings new shapes: this fails until webhooks.py has been checked against them.
    assert stripe.api_version == API_VERSION


# --- create_checkout -------------------------------------------------------------------------


async def test_create_checkout_sends_a_payment_session_for_the_amount(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request(idempotency_key="pay-key-1")
    checkout = await PROVIDER.create_checkout(creds, req)

    assert checkout.reference.startswith("cs_test_")
    assert checkout.url == f"https://checkout.stripe.com/c/pay/{checkout.reference}"
    [sent] = fake_stripe.requests
    assert (sent.method, sent.path) == ("POST", "/v1/checkout/sessions")
    assert sent.headers["authorization"] == f"Bearer {fake_stripe.secret_key}"
    assert sent.headers["stripe-version"] == API_VERSION
    assert sent.headers["idempotency-key"] == "pay-key-1"
    ids = {
        "creditd_payment_id": str(req.payment_id),
        "creditd_project_id": str(req.project_id),
        "creditd_user_id": "user-1",
    }
    assert sent.params == {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "1999",
                    "product_data": {"name": "2000 credits"},
                },
                "quantity": "1",
            }
        ],
        "client_reference_id": str(req.payment_id),
        "metadata": {"campaign": "spring", **ids},
        "payment_intent_data": {"metadata": ids},
        "success_url": "https://app.example/paid",
        "cancel_url": "https://app.example/cancel",
    }
    session = fake_stripe.session(checkout.reference)
    assert (session["amount_total"], session["currency"], session["status"]) == (
        1999,
        "usd",
        "open",
    )


async def test_caller_metadata_cannot_replace_the_payment_id(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request(metadata={"creditd_payment_id": str(uuid.uuid4()), "note": "x"})
    checkout = await PROVIDER.create_checkout(creds, req)

    metadata = fake_stripe.session(checkout.reference)["metadata"]
    assert metadata["creditd_payment_id"] == str(req.payment_id)
    assert metadata["note"] == "x"


async def test_create_checkout_without_cancel_url_sends_none(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    await PROVIDER.create_checkout(creds, checkout_request(cancel_url=None))

    assert "cancel_url" not in fake_stripe.requests[0].params


async def test_create_checkout_without_success_url_is_refused_before_calling_stripe(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    with pytest.raises(ValueError, match="success_url"):
        await PROVIDER.create_checkout(creds, checkout_request(success_url=None))

    assert fake_stripe.requests == []


async def test_same_idempotency_key_returns_the_same_session(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request(idempotency_key="same-key")
    first = await PROVIDER.create_checkout(creds, req)
    second = await PROVIDER.create_checkout(creds, req)
    other = await PROVIDER.create_checkout(creds, checkout_request(idempotency_key="other-key"))

    assert first == second
    assert other.reference != first.reference
    assert len(fake_stripe.requests) == 3


async def test_reused_idempotency_key_with_other_parameters_is_a_refusal(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    await PROVIDER.create_checkout(creds, checkout_request(idempotency_key="k"))

    with pytest.raises(ProviderError) as caught:
        await PROVIDER.create_checkout(creds, checkout_request(idempotency_key="k"))
    assert (caught.value.transient, caught.value.status) == (False, 400)


async def test_wrong_secret_key_is_a_refusal(fake_stripe: FakeStripe) -> None:
    creds = Credentials(provider="stripe", secret_key="sk_test_wrong", api_base=fake_stripe.url)

    with pytest.raises(ProviderError) as caught:
        await PROVIDER.create_checkout(creds, checkout_request())
    assert (caught.value.transient, caught.value.status) == (False, 401)
    assert "sk_test_wrong" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (503, True), (429, True), (409, True), (400, False), (402, False), (403, False)],
)
async def test_stripe_error_status_maps_to_transient_or_refusal(
    fake_stripe: FakeStripe, creds: Credentials, status: int, transient: bool
) -> None:
    fake_stripe.fail_next(1, status=status)

    with pytest.raises(ProviderError) as caught:
        await NO_RETRY.create_checkout(creds, checkout_request())
    assert (caught.value.transient, caught.value.status) == (transient, status)


async def test_dropped_connection_is_transient(fake_stripe: FakeStripe, creds: Credentials) -> None:
    fake_stripe.fail_next(1, status=None)

    with pytest.raises(ProviderError) as caught:
        await NO_RETRY.create_checkout(creds, checkout_request())
    assert (caught.value.transient, caught.value.status) == (True, None)


async def test_unreachable_stripe_is_transient() -> None:
    creds = Credentials(provider="stripe", secret_key="sk_test_x", api_base="http://127.0.0.1:9")

    with pytest.raises(ProviderError) as caught:
        await NO_RETRY.create_checkout(creds, checkout_request())
    assert caught.value.transient is True


async def test_a_retried_request_reuses_its_idempotency_key_and_creates_one_session(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    fake_stripe.fail_next(1, status=500)
    checkout = await StripeProvider(max_network_retries=1).create_checkout(
        creds, checkout_request()
    )

    first, second = fake_stripe.requests
    # The SDK makes up a key when the caller gave none, and keeps it across its retries.
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert fake_stripe.session_ids() == [checkout.reference]


# --- create_subscription_checkout ------------------------------------------------------------


async def test_create_subscription_checkout_sends_the_price_and_our_ids(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    price = fake_stripe.add_price(2500, "eur")
    req = subscription_request(price, idempotency_key="sub-key")
    checkout = await PROVIDER.create_subscription_checkout(creds, req)

    assert checkout.reference.startswith("cs_test_")
    assert checkout.url.endswith(checkout.reference)
    [sent] = fake_stripe.requests
    assert sent.headers["idempotency-key"] == "sub-key"
    ids = {
        "creditd_subscription_id": str(req.subscription_id),
        "creditd_project_id": str(req.project_id),
        "creditd_user_id": "user-1",
        "creditd_plan_id": "pro",
    }
    assert sent.params == {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": "1"}],
        "client_reference_id": str(req.subscription_id),
        "metadata": ids,
        "subscription_data": {"metadata": ids},
        "success_url": "https://app.example/subscribed",
    }


async def test_subscription_checkout_on_an_unknown_price_is_a_refusal(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    with pytest.raises(ProviderError) as caught:
        await PROVIDER.create_subscription_checkout(creds, subscription_request("price_nope"))
    assert (caught.value.transient, caught.value.status) == (False, 400)


async def test_subscription_checkout_without_success_url_is_refused(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = subscription_request(fake_stripe.add_price(100), success_url=None)

    with pytest.raises(ValueError, match="success_url"):
        await PROVIDER.create_subscription_checkout(creds, req)
    assert fake_stripe.requests == []


# --- cancel_subscription ---------------------------------------------------------------------


async def test_cancel_at_period_end_schedules_the_end(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]
    fake_stripe.events.clear()

    await PROVIDER.cancel_subscription(creds, sub_id, at_period_end=True)

    sub = fake_stripe.subscription(sub_id)
    assert (sub["status"], sub["cancel_at_period_end"]) == ("active", True)
    assert fake_stripe.requests[-1].params == {"cancel_at_period_end": "true"}
    [updated] = fake_stripe.events
    [fact] = parse(updated)
    assert isinstance(fact, SubscriptionStatusChanged)
    assert (fact.status, fact.cancel_at_period_end) == ("canceled", True)


async def test_cancel_now_ends_the_subscription(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]
    fake_stripe.events.clear()

    await PROVIDER.cancel_subscription(creds, sub_id, at_period_end=False)

    assert fake_stripe.subscription(sub_id)["status"] == "canceled"
    assert fake_stripe.requests[-1].method == "DELETE"
    [deleted] = fake_stripe.events
    assert deleted["type"] == "customer.subscription.deleted"
    assert [f.status for f in parse(deleted)] == ["ended"]


async def test_cancel_of_another_accounts_subscription_is_not_found(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]
    other = Credentials(
        provider="stripe", secret_key=fake_stripe.add_key(), api_base=fake_stripe.url
    )

    with pytest.raises(ProviderError) as caught:
        await PROVIDER.cancel_subscription(other, sub_id, at_period_end=False)
    assert (caught.value.transient, caught.value.status) == (False, 404)
    assert fake_stripe.subscription(sub_id)["status"] == "active"


# --- lookup_payment --------------------------------------------------------------------------


async def _lookup(fake: FakeStripe, creds: Credentials, reference: str) -> list[Any]:
    session = fake.session(reference)
    payment = PaymentLookup(
        payment_id=uuid.UUID(session["client_reference_id"]),
        reference=reference,
        amount_minor=session["amount_total"],
        currency=session["currency"].upper(),
    )
    return await PROVIDER.lookup_payment(creds, payment)


async def test_lookup_of_an_open_session_says_nothing(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())

    assert await _lookup(fake_stripe, creds, checkout.reference) == []
    assert fake_stripe.requests[-1].params == {"expand": ["payment_intent.latest_charge"]}


async def test_lookup_of_a_paid_session_is_a_success(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request()
    session_id, intent = await paid_session(fake_stripe, creds, payment_id=req.payment_id)

    assert await _lookup(fake_stripe, creds, session_id) == [
        PaymentSucceeded(
            ref=PaymentRef(
                payment_id=req.payment_id, reference=session_id, provider_payment_id=intent
            ),
            amount_minor=1999,
            currency="USD",
            provider_payment_id=intent,
        )
    ]


async def test_lookup_of_a_paid_and_refunded_session_reports_the_refund_too(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    session_id, intent = await paid_session(fake_stripe, creds)
    fake_stripe.refund(intent, 500)

    succeeded, refunded = await _lookup(fake_stripe, creds, session_id)
    assert isinstance(succeeded, PaymentSucceeded)
    assert isinstance(refunded, PaymentRefunded)
    assert (refunded.amount_refunded_minor, refunded.currency) == (500, "USD")
    assert refunded.ref.provider_payment_id == intent
    assert refunded.ref.payment_id == succeeded.ref.payment_id


async def test_lookup_of_an_expired_session_is_expired(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    fake_stripe.expire(checkout.reference)

    [fact] = await _lookup(fake_stripe, creds, checkout.reference)
    assert isinstance(fact, PaymentExpired)
    assert fact.ref.reference == checkout.reference


async def test_lookup_of_an_async_payment_still_clearing_is_pending(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    fake_stripe.pay_async(checkout.reference)

    assert [type(f) for f in await _lookup(fake_stripe, creds, checkout.reference)] == [
        PaymentPending
    ]


async def test_lookup_of_an_async_payment_that_failed_is_a_failure(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    fake_stripe.pay_async(checkout.reference, outcome="failed")

    assert [type(f) for f in await _lookup(fake_stripe, creds, checkout.reference)] == [
        PaymentFailed
    ]


async def test_lookup_of_a_session_of_another_payment_is_refused(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    session_id, _ = await paid_session(fake_stripe, creds)
    lookup = PaymentLookup(
        payment_id=uuid.uuid4(), reference=session_id, amount_minor=1999, currency="USD"
    )

    with pytest.raises(ProviderError) as caught:
        await PROVIDER.lookup_payment(creds, lookup)
    assert caught.value.transient is False


async def test_lookup_of_an_unknown_session_is_a_refusal(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    lookup = PaymentLookup(
        payment_id=uuid.uuid4(), reference="cs_test_missing", amount_minor=1, currency="USD"
    )

    with pytest.raises(ProviderError) as caught:
        await PROVIDER.lookup_payment(creds, lookup)
    assert (caught.value.transient, caught.value.status) == (False, 404)


async def test_lookup_when_stripe_fails_is_transient(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    fake_stripe.fail_next(1, status=502)
    lookup = PaymentLookup(
        payment_id=uuid.uuid4(), reference=checkout.reference, amount_minor=1, currency="USD"
    )

    with pytest.raises(ProviderError) as caught:
        await NO_RETRY.lookup_payment(creds, lookup)
    assert (caught.value.transient, caught.value.status) == (True, 502)


# --- verify_webhook --------------------------------------------------------------------------

BODY = b'{\n  "id": "evt_1",\n  "object": "event",\n  "type": "checkout.session.completed"\n}'
SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"


def headers_for(body: bytes = BODY, secret: str = SECRET, t: int = T0) -> dict[str, str]:
    return {"stripe-signature": signature_header(body, secret, t)}


def test_valid_signature_verifies() -> None:
    PROVIDER.verify_webhook(BODY, headers_for(), [SECRET], now=NOW)


def test_fake_signed_delivery_verifies(fake_stripe: FakeStripe) -> None:
    body, headers = fake_stripe.sign({"id": "evt_x", "type": "ping"}, timestamp=T0)

    PROVIDER.verify_webhook(body, headers, [fake_stripe.webhook_secret], now=NOW)


def test_forged_signature_is_refused() -> None:
    forged = {"stripe-signature": f"t={T0},v1={'ab' * 32}"}

    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, forged, [SECRET], now=NOW)


def test_signature_by_another_secret_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, headers_for(secret="whsec_other"), [SECRET], now=NOW)


@pytest.mark.parametrize("secrets", [[], [""]])
def test_no_secret_configured_refuses_even_a_valid_signature(secrets: list[str]) -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, headers_for(), secrets, now=NOW)


def test_signature_301_seconds_old_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, headers_for(t=T0 - 301), [SECRET], now=NOW)


def test_signature_300_seconds_old_still_verifies() -> None:
    PROVIDER.verify_webhook(BODY, headers_for(t=T0 - 300), [SECRET], now=NOW)


def test_signature_from_beyond_the_tolerance_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, headers_for(t=T0 + 301), [SECRET], now=NOW)


def test_body_changed_by_one_byte_after_signing_is_refused() -> None:
    headers = headers_for()
    changed = BODY.replace(b"evt_1", b"evt_2")

    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(changed, headers, [SECRET], now=NOW)


def test_reserialised_json_is_refused() -> None:
    # The exact bytes are signed: a receiver that parses and re-dumps the body must fail.
    reserialised = json.dumps(json.loads(BODY)).encode()

    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(reserialised, headers_for(), [SECRET], now=NOW)


def test_one_matching_v1_among_several_verifies() -> None:
    good = signature_header(BODY, SECRET, T0).split(",v1=")[1]
    header = f"t={T0},v1={'00' * 32},v0={'11' * 32},v1={good}"

    PROVIDER.verify_webhook(BODY, {"stripe-signature": header}, [SECRET], now=NOW)


def test_previous_secret_in_its_grace_window_verifies() -> None:
    PROVIDER.verify_webhook(BODY, headers_for(secret=OLD_SECRET), [SECRET, OLD_SECRET], now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"v1={'ab' * 32}",  # no timestamp
        f"t={T0}",  # no signature
        f"t={T0},v0={'ab' * 32}",  # only another scheme
        f"t=yesterday,v1={'ab' * 32}",
        "garbage",
    ],
)
def test_malformed_signature_header_is_refused(header: str) -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, {"stripe-signature": header}, [SECRET], now=NOW)


def test_missing_signature_header_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(BODY, {}, [SECRET], now=NOW)


def test_signature_of_a_non_utf8_body_is_checked_over_its_bytes() -> None:
    body = b"\xff\xfe not utf-8"

    PROVIDER.verify_webhook(body, headers_for(body), [SECRET], now=NOW)
    with pytest.raises(InvalidSignature):
        PROVIDER.verify_webhook(body + b"!", headers_for(body), [SECRET], now=NOW)


# --- parse_webhook: one-off payments ---------------------------------------------------------


async def test_completed_and_paid_session_is_a_success(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request()
    checkout = await PROVIDER.create_checkout(creds, req)
    [event] = fake_stripe.pay(checkout.reference)
    intent = fake_stripe.session(checkout.reference)["payment_intent"]

    body, headers = fake_stripe.sign(event)
    parsed = PROVIDER.parse_webhook(body, headers)
    assert (parsed.event_id, parsed.type) == (event["id"], "checkout.session.completed")
    assert parsed.payload == event
    assert parsed.facts == [
        PaymentSucceeded(
            ref=PaymentRef(
                payment_id=req.payment_id, reference=checkout.reference, provider_payment_id=intent
            ),
            amount_minor=1999,
            currency="USD",
            provider_payment_id=intent,
        )
    ]


async def test_payment_id_is_found_in_metadata_without_a_client_reference(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request()
    checkout = await PROVIDER.create_checkout(creds, req)
    [event] = fake_stripe.pay(checkout.reference)
    event["data"]["object"]["client_reference_id"] = None

    [fact] = parse(event)
    assert fact.ref.payment_id == req.payment_id


async def test_completed_but_unpaid_session_is_pending_then_settles(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    completed, settled = fake_stripe.pay_async(checkout.reference, outcome="succeeded")

    assert [type(f) for f in parse(completed)] == [PaymentPending]
    assert settled["type"] == "checkout.session.async_payment_succeeded"
    [fact] = parse(settled)
    assert isinstance(fact, PaymentSucceeded)
    assert fact.amount_minor == 1999
    assert fact.provider_payment_id == fake_stripe.session(checkout.reference)["payment_intent"]


async def test_async_payment_failed_is_a_failure(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    checkout = await PROVIDER.create_checkout(creds, checkout_request())
    _, failed = fake_stripe.pay_async(checkout.reference, outcome="failed")

    assert failed["type"] == "checkout.session.async_payment_failed"
    [fact] = parse(failed)
    assert isinstance(fact, PaymentFailed)
    assert fact.ref.reference == checkout.reference


async def test_expired_payment_session_is_expired(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request()
    checkout = await PROVIDER.create_checkout(creds, req)
    [event] = fake_stripe.expire(checkout.reference)

    assert parse(event) == [
        PaymentExpired(PaymentRef(payment_id=req.payment_id, reference=checkout.reference))
    ]


async def test_cumulative_refunds_are_reported_as_totals(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = checkout_request()
    _, intent = await paid_session(fake_stripe, creds, payment_id=req.payment_id)

    [first] = fake_stripe.refund(intent, 500)
    [second] = fake_stripe.refund(intent)

    ref = PaymentRef(payment_id=req.payment_id, provider_payment_id=intent)
    assert parse(first) == [PaymentRefunded(ref, amount_refunded_minor=500, currency="USD")]
    assert parse(second) == [PaymentRefunded(ref, amount_refunded_minor=1999, currency="USD")]


async def test_lost_dispute_opens_withdraws_and_is_lost(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, intent = await paid_session(fake_stripe, creds)
    created, withdrawn = fake_stripe.open_dispute(intent)
    [closed] = fake_stripe.close_dispute(created["data"]["object"]["id"], won=False)

    facts = [f for e in (created, withdrawn, closed) for f in parse(e)]
    assert [f.state for f in facts] == ["open", "withdrawn", "lost"]
    for fact in facts:
        assert isinstance(fact, DisputeChanged)
        assert fact.ref == PaymentRef(provider_payment_id=intent)
        assert (fact.amount_minor, fact.currency) == (1999, "USD")
        assert fact.dispute_id == created["data"]["object"]["id"]


async def test_won_dispute_reinstates_and_is_won(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, intent = await paid_session(fake_stripe, creds)
    created, _ = fake_stripe.open_dispute(intent, 1000)
    reinstated, closed = fake_stripe.close_dispute(created["data"]["object"]["id"], won=True)

    assert [(f.state, f.amount_minor) for f in parse(reinstated) + parse(closed)] == [
        ("reinstated", 1000),
        ("won", 1000),
    ]


async def test_inquiry_moves_no_money_from_start_to_close(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, intent = await paid_session(fake_stripe, creds)
    [created] = fake_stripe.open_dispute(intent, inquiry=True)
    [closed] = fake_stripe.close_dispute(created["data"]["object"]["id"], won=False)

    assert [f.state for f in parse(created) + parse(closed)] == ["inquiry", "inquiry"]


async def test_prevented_dispute_closes_without_a_fact(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, intent = await paid_session(fake_stripe, creds)
    [created] = fake_stripe.open_dispute(intent, inquiry=True)
    [closed] = fake_stripe.close_dispute(created["data"]["object"]["id"], won=False)
    closed["data"]["object"]["status"] = "prevented"

    assert parse(closed) == []


# --- parse_webhook: subscriptions ------------------------------------------------------------


async def test_subscription_checkout_links_then_pays_the_first_period(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    our_id, (completed, created, paid, _) = await subscribed(fake_stripe, creds)
    session = completed["data"]["object"]
    sub = fake_stripe.subscription(session["subscription"])
    invoice = paid["data"]["object"]
    item = sub["items"]["data"][0]

    assert parse(completed) == [
        SubscriptionLinked(
            ref=SubscriptionRef(
                subscription_id=our_id,
                provider_subscription_id=sub["id"],
                reference=session["id"],
            ),
            provider_subscription_id=sub["id"],
            provider_customer_id=sub["customer"],
        )
    ]
    assert created["type"] == "customer.subscription.created"
    assert parse(created) == []
    assert parse(paid) == [
        SubscriptionPeriodPaid(
            ref=SubscriptionRef(subscription_id=our_id, provider_subscription_id=sub["id"]),
            charge_id=invoice["id"],
            provider_payment_id=None,  # Stripe does not include invoice payments in events
            amount_minor=2500,
            currency="EUR",
            period_start=datetime.fromtimestamp(item["current_period_start"], tz=UTC),
            period_end=datetime.fromtimestamp(item["current_period_end"], tz=UTC),
        )
    ]


async def test_renewal_pays_the_next_period_under_a_new_charge_id(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    [first] = parse(events[2])
    sub_id = events[0]["data"]["object"]["subscription"]

    renewal, _ = fake_stripe.renew(sub_id)
    [second] = parse(renewal)

    assert isinstance(first, SubscriptionPeriodPaid)
    assert isinstance(second, SubscriptionPeriodPaid)
    assert second.charge_id != first.charge_id
    assert second.period_start == first.period_end
    assert second.period_end - second.period_start == timedelta(days=30)


async def test_invoice_payment_intent_is_read_when_stripe_includes_the_payments(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    fake_stripe.invoice_payments_in_events = True
    _, events = await subscribed(fake_stripe, creds)

    [fact] = parse(events[2])
    invoice = fake_stripe.invoice(events[2]["data"]["object"]["id"])
    intent = invoice["payments"]["data"][0]["payment"]["payment_intent"]
    assert isinstance(fact, SubscriptionPeriodPaid)
    assert fact.provider_payment_id == intent
    assert intent.startswith("pi_")


async def test_invoice_payment_paid_names_the_intent_of_the_invoice(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    paid, identified = events[2], events[3]
    invoice_id = paid["data"]["object"]["id"]
    row = identified["data"]["object"]
    intent = fake_stripe.invoice(invoice_id)["payments"]["data"][0]["payment"]["payment_intent"]

    assert identified["type"] == "invoice_payment.paid"
    assert row["id"].startswith("inpay_")
    assert parse(identified) == [
        PaymentIdentified(ref=PaymentRef(reference=invoice_id), provider_payment_id=intent)
    ]
    # The refund of that charge names the same intent: the payment is found by it.
    [refunded] = fake_stripe.refund(intent, 100)
    [fact] = parse(refunded)
    assert isinstance(fact, PaymentRefunded)
    assert fact.ref.provider_payment_id == intent


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"status": "open"}, "not paid (yet)"),
        ({"status": "canceled"}, "canceled"),
        ({"payment": {"type": "charge", "charge": "ch_1"}}, "a charge without an intent"),
        ({"payment": {"type": "payment_record", "payment_record": "pr_1"}}, "out of band"),
        ({"payment": {"type": "payment_intent", "payment_intent": None}}, "no intent"),
    ],
)
async def test_invoice_payment_paid_without_a_paid_intent_identifies_nothing(
    fake_stripe: FakeStripe, creds: Credentials, change: dict[str, Any], why: str
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    identified = events[3]
    identified["data"]["object"].update(change)
    assert parse(identified) == [], why


async def test_invoice_payment_paid_with_an_expanded_intent_and_invoice(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    identified = events[3]
    row = identified["data"]["object"]
    intent = row["payment"]["payment_intent"]
    row["payment"]["payment_intent"] = {"id": intent, "object": "payment_intent"}
    row["invoice"] = {"id": row["invoice"], "object": "invoice"}
    assert parse(identified) == [
        PaymentIdentified(
            ref=PaymentRef(reference=row["invoice"]["id"]), provider_payment_id=intent
        )
    ]


async def test_invoice_payment_paid_without_an_invoice_identifies_nothing(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    identified = events[3]
    identified["data"]["object"]["invoice"] = None
    assert parse(identified) == []


async def test_period_comes_from_the_subscription_line_not_a_proration(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    paid = events[2]
    lines = paid["data"]["object"]["lines"]["data"]
    proration = json.loads(json.dumps(lines[0]))
    proration["parent"]["subscription_item_details"]["proration"] = True
    proration["period"] = {"start": 1, "end": 2}
    lines.insert(0, proration)

    [fact] = parse(paid)
    assert fact.period_start == datetime.fromtimestamp(lines[1]["period"]["start"], tz=UTC)


async def test_failed_renewal_is_past_due(fake_stripe: FakeStripe, creds: Credentials) -> None:
    our_id, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]

    failed, updated = fake_stripe.fail_renewal(sub_id)

    ref = SubscriptionRef(subscription_id=our_id, provider_subscription_id=sub_id)
    assert failed["type"] == "invoice.payment_failed"
    assert parse(failed) == [SubscriptionStatusChanged(ref, "past_due")]
    [fact] = parse(updated)
    assert (fact.ref, fact.status, fact.cancel_at_period_end) == (ref, "past_due", False)
    item = fake_stripe.subscription(sub_id)["items"]["data"][0]
    assert fact.period_end == datetime.fromtimestamp(item["current_period_end"], tz=UTC)


@pytest.mark.parametrize(
    ("stripe_status", "status"),
    [
        ("active", "active"),
        ("trialing", "active"),
        ("past_due", "past_due"),
        ("unpaid", "halted"),
        ("paused", "halted"),
        ("canceled", "ended"),
        ("incomplete_expired", "ended"),
    ],
)
async def test_subscription_status_maps_to_ours(
    fake_stripe: FakeStripe, creds: Credentials, stripe_status: str, status: str
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]

    [updated] = fake_stripe.set_subscription_status(sub_id, stripe_status)

    assert [f.status for f in parse(updated)] == [status]


async def test_incomplete_subscription_says_nothing_yet(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    _, events = await subscribed(fake_stripe, creds)
    [updated] = fake_stripe.set_subscription_status(
        events[0]["data"]["object"]["subscription"], "incomplete"
    )

    assert parse(updated) == []


async def test_deleted_subscription_has_ended(fake_stripe: FakeStripe, creds: Credentials) -> None:
    our_id, events = await subscribed(fake_stripe, creds)
    sub_id = events[0]["data"]["object"]["subscription"]

    [deleted] = fake_stripe.delete_subscription(sub_id)

    ref = SubscriptionRef(subscription_id=our_id, provider_subscription_id=sub_id)
    assert parse(deleted) == [SubscriptionStatusChanged(ref, "ended")]


async def test_expired_subscription_checkout_has_ended(
    fake_stripe: FakeStripe, creds: Credentials
) -> None:
    req = subscription_request(fake_stripe.add_price(900))
    checkout = await PROVIDER.create_subscription_checkout(creds, req)

    [expired] = fake_stripe.expire(checkout.reference)

    ref = SubscriptionRef(subscription_id=req.subscription_id, reference=checkout.reference)
    assert parse(expired) == [SubscriptionStatusChanged(ref, "ended")]


def test_paying_an_invoice_outside_a_subscription_credits_nothing(fake_stripe: FakeStripe) -> None:
    [paid] = fake_stripe.unrelated_invoice_paid()
    failed = json.loads(json.dumps(paid))
    failed["type"] = "invoice.payment_failed"

    assert parse(paid) == []
    assert parse(failed) == []


# --- parse_webhook: anything else ------------------------------------------------------------


def test_unknown_event_type_is_kept_without_facts() -> None:
    event = {"id": "evt_u", "object": "event", "type": "customer.created", "data": {"object": {}}}
    body = json.dumps(event).encode()

    parsed = PROVIDER.parse_webhook(body, {})
    assert (parsed.event_id, parsed.type, list(parsed.facts)) == ("evt_u", "customer.created", [])
    assert parsed.payload == event


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"type": "charge.refunded", "data": {"object": {}}}',  # no id
        b'{"id": "evt_1", "data": {"object": {}}}',  # no type
        b'{"id": 7, "type": "charge.refunded"}',
        b'{"id": "evt_1", "type": "charge.refunded"}',  # a known type without its object
        b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": "ch_1", '
        b'"amount_refunded": "500", "currency": "usd"}}}',  # an amount that is not a number
        b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": "ch_1", '
        b'"amount_refunded": true, "currency": "usd"}}}',
    ],
)
def test_malformed_event_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        PROVIDER.parse_webhook(body, {})
