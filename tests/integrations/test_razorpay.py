"""The Razorpay adapter: the official SDK against the fake Razorpay (tests/fakes), the webhook
signature over the raw body, and the translation of every event into facts."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from app.integrations.base import (
    CheckoutRequest,
    DisputeChanged,
    InvalidSignature,
    MalformedWebhook,
    PaymentCanceled,
    PaymentExpired,
    PaymentFailed,
    PaymentLookup,
    PaymentRefunded,
    PaymentSucceeded,
    ProviderError,
    SubscriptionCheckoutRequest,
    SubscriptionPeriodPaid,
    SubscriptionStatusChanged,
)
from app.integrations.razorpay import PROVIDER, NotesTooLarge
from tests.fakes.razorpay_server import Delivery, FakeRazorpay, php_json, sign

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def checkout_request(**overrides: Any) -> CheckoutRequest:
    fields: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "user_id": "user-1",
        "amount_minor": 49_900,
        "currency": "INR",
        "credits": Decimal("500"),
        "description": "500 credits",
        "success_url": "https://app.example/paid?x=1",
        "cancel_url": None,
    }
    fields.update(overrides)
    return CheckoutRequest(**fields)


def subscription_request(plan: str, **overrides: Any) -> SubscriptionCheckoutRequest:
    fields: dict[str, Any] = {
        "subscription_id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "user_id": "user-1",
        "plan_id": "pro",
        "provider_plan": plan,
        "success_url": None,
        "cancel_url": None,
        "total_count": 12,
    }
    fields.update(overrides)
    return SubscriptionCheckoutRequest(**fields)


async def new_link(fake: FakeRazorpay, **overrides: Any) -> tuple[CheckoutRequest, str]:
    req = checkout_request(**overrides)
    checkout = await PROVIDER.create_checkout(fake.credentials(), req)
    return req, checkout.reference


async def new_subscription(fake: FakeRazorpay) -> tuple[SubscriptionCheckoutRequest, str]:
    req = subscription_request(fake.create_plan(99_900, "INR"))
    checkout = await PROVIDER.create_subscription_checkout(fake.credentials(), req)
    return req, checkout.reference


def parse(delivery: Delivery) -> list[Any]:
    return list(PROVIDER.parse_webhook(delivery.body, delivery.lower_headers).facts)


def only(delivery: Delivery) -> Any:
    facts = parse(delivery)
    assert len(facts) == 1, facts
    return facts[0]


# --- create_checkout -----------------------------------------------------------------------------


async def test_create_checkout_makes_a_payment_link_referencing_our_payment(
    fake_razorpay: FakeRazorpay,
) -> None:
    req = checkout_request(metadata={"campaign": "diwali"})
    checkout = await PROVIDER.create_checkout(fake_razorpay.credentials(), req)

    link = fake_razorpay.links[checkout.reference]
    assert checkout.reference.startswith("plink_")
    assert checkout.url == link["short_url"]
    assert (link["amount"], link["currency"]) == (49_900, "INR")
    assert link["reference_id"] == str(req.payment_id)
    assert link["accept_partial"] is False
    assert (link["callback_url"], link["callback_method"]) == (req.success_url, "get")
    assert link["notes"] == {
        "campaign": "diwali",
        "creditd_payment_id": str(req.payment_id),
        "creditd_project_id": str(req.project_id),
        "creditd_user_id": "user-1",
    }


async def test_create_checkout_without_success_url_sends_no_callback(
    fake_razorpay: FakeRazorpay,
) -> None:
    await new_link(fake_razorpay, success_url=None)

    (sent,) = fake_razorpay.requests
    assert "callback_url" not in sent.body
    assert "callback_method" not in sent.body


async def test_caller_metadata_cannot_replace_our_ids_in_notes(fake_razorpay: FakeRazorpay) -> None:
    other = str(uuid.uuid4())
    req, link_id = await new_link(fake_razorpay, metadata={"creditd_payment_id": other})

    assert fake_razorpay.links[link_id]["notes"]["creditd_payment_id"] == str(req.payment_id)


async def test_retried_create_checkout_returns_the_same_link(fake_razorpay: FakeRazorpay) -> None:
    req = checkout_request()
    first = await PROVIDER.create_checkout(fake_razorpay.credentials(), req)
    again = await PROVIDER.create_checkout(fake_razorpay.credentials(), req)

    assert again == first
    assert len(fake_razorpay.links) == 1
    refused, listing = fake_razorpay.requests[1:]
    assert refused.path == "/v1/payment_links"
    assert listing.query == {"reference_id": str(req.payment_id)}


async def test_create_checkout_retried_after_a_timeout_returns_the_link_that_was_made(
    fake_razorpay: FakeRazorpay,
) -> None:
    req = checkout_request()
    fake_razorpay.delay_next(1.5)  # the link is made, the answer comes too late
    with pytest.raises(ProviderError) as timed_out:
        await PROVIDER.create_checkout(fake_razorpay.credentials(timeout_seconds=0.3), req)
    assert timed_out.value.transient

    checkout = await PROVIDER.create_checkout(fake_razorpay.credentials(), req)

    (link,) = fake_razorpay.links.values()
    assert checkout.reference == link["id"]
    assert checkout.url == link["short_url"]


async def test_reference_id_taken_by_a_link_for_another_amount_is_refused(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, _ = await new_link(fake_razorpay)

    with pytest.raises(ProviderError) as refused:
        await PROVIDER.create_checkout(fake_razorpay.credentials(), replace(req, amount_minor=100))
    assert not refused.value.transient
    assert refused.value.status == 400
    assert len(fake_razorpay.links) == 1


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(13)},
        {"long": "x" * 257},
        {"k" * 257: "v"},
    ],
    ids=["13 entries", "long value", "long key"],
)
async def test_metadata_beyond_razorpay_notes_limits_is_refused_before_any_call(
    fake_razorpay: FakeRazorpay, metadata: dict[str, str]
) -> None:
    with pytest.raises(NotesTooLarge):
        await PROVIDER.create_checkout(
            fake_razorpay.credentials(), checkout_request(metadata=metadata)
        )
    assert fake_razorpay.requests == []


async def test_twelve_metadata_entries_of_256_characters_fit(fake_razorpay: FakeRazorpay) -> None:
    metadata = {f"k{i}": "v" * 256 for i in range(12)}
    _, link_id = await new_link(fake_razorpay, metadata=metadata)

    assert len(fake_razorpay.links[link_id]["notes"]) == 15


# --- error mapping -------------------------------------------------------------------------------


async def test_wrong_key_secret_is_a_permanent_error(fake_razorpay: FakeRazorpay) -> None:
    creds = replace(fake_razorpay.credentials(), secret_key="wrong")

    with pytest.raises(ProviderError) as refused:
        await PROVIDER.create_checkout(creds, checkout_request())
    assert (refused.value.transient, refused.value.status) == (False, 401)
    assert "Authentication failed" in str(refused.value)


@pytest.mark.parametrize(
    ("fault", "status"),
    [("500", 500), ("503", 503), ("429", 429), ("html 502", 502), ("drop", None)],
)
async def test_server_errors_rate_limits_and_dropped_connections_are_transient(
    fake_razorpay: FakeRazorpay, fault: str, status: int | None
) -> None:
    if fault == "drop":
        fake_razorpay.drop_next()
    elif fault.startswith("html"):
        fake_razorpay.fail_next(status=502, html=True)
    else:
        fake_razorpay.fail_next(status=int(fault))

    with pytest.raises(ProviderError) as failed:
        await PROVIDER.create_checkout(fake_razorpay.credentials(), checkout_request())
    assert failed.value.transient
    assert failed.value.status == status
    assert fake_razorpay.links == {}


async def test_a_call_after_transient_failures_goes_through(fake_razorpay: FakeRazorpay) -> None:
    fake_razorpay.fail_next(2)
    req = checkout_request()
    for _ in range(2):
        with pytest.raises(ProviderError):
            await PROVIDER.create_checkout(fake_razorpay.credentials(), req)

    checkout = await PROVIDER.create_checkout(fake_razorpay.credentials(), req)

    assert list(fake_razorpay.links) == [checkout.reference]


async def test_a_slow_api_times_out_as_a_transient_error(fake_razorpay: FakeRazorpay) -> None:
    fake_razorpay.delay_next(1.5)
    lookup = PaymentLookup(uuid.uuid4(), "plink_nothere0000000", 100, "INR")

    with pytest.raises(ProviderError) as failed:
        await PROVIDER.lookup_payment(fake_razorpay.credentials(timeout_seconds=0.3), lookup)
    assert failed.value.transient


async def test_an_api_base_that_is_not_a_url_is_a_permanent_error(
    fake_razorpay: FakeRazorpay,
) -> None:
    creds = replace(fake_razorpay.credentials(), api_base="api.razorpay.com")

    with pytest.raises(ProviderError) as failed:
        await PROVIDER.create_checkout(creds, checkout_request())
    assert not failed.value.transient


async def test_credentials_without_key_id_are_refused(fake_razorpay: FakeRazorpay) -> None:
    creds = replace(fake_razorpay.credentials(), key_id=None)

    with pytest.raises(ProviderError) as refused:
        await PROVIDER.create_checkout(creds, checkout_request())
    assert not refused.value.transient
    assert fake_razorpay.requests == []


# --- subscriptions -------------------------------------------------------------------------------


async def test_subscription_checkout_creates_a_subscription_noting_ours(
    fake_razorpay: FakeRazorpay,
) -> None:
    req = subscription_request(fake_razorpay.create_plan(99_900))
    checkout = await PROVIDER.create_subscription_checkout(fake_razorpay.credentials(), req)

    subscription = fake_razorpay.subscriptions[checkout.reference]
    assert checkout.subscription_id == checkout.reference == subscription["id"]
    assert checkout.url == subscription["short_url"]
    assert subscription["plan_id"] == req.provider_plan
    assert subscription["total_count"] == 12
    assert subscription["customer_notify"] is True
    assert subscription["notes"] == {
        "creditd_subscription_id": str(req.subscription_id),
        "creditd_project_id": str(req.project_id),
        "creditd_user_id": "user-1",
    }


async def test_subscription_checkout_on_an_unknown_plan_is_refused(
    fake_razorpay: FakeRazorpay,
) -> None:
    with pytest.raises(ProviderError) as refused:
        await PROVIDER.create_subscription_checkout(
            fake_razorpay.credentials(), subscription_request("plan_unknown00000000")
        )
    assert (refused.value.transient, refused.value.status) == (False, 400)


async def test_cancel_subscription_now_ends_it(fake_razorpay: FakeRazorpay) -> None:
    _, sub_id = await new_subscription(fake_razorpay)
    fake_razorpay.activate(sub_id)

    await PROVIDER.cancel_subscription(fake_razorpay.credentials(), sub_id, at_period_end=False)

    assert fake_razorpay.subscriptions[sub_id]["status"] == "cancelled"
    assert fake_razorpay.requests[-1].body == {"cancel_at_cycle_end": 0}


async def test_cancel_subscription_at_period_end_schedules_it(fake_razorpay: FakeRazorpay) -> None:
    _, sub_id = await new_subscription(fake_razorpay)
    fake_razorpay.activate(sub_id)

    await PROVIDER.cancel_subscription(fake_razorpay.credentials(), sub_id, at_period_end=True)

    subscription = fake_razorpay.subscriptions[sub_id]
    assert subscription["status"] == "active"
    assert subscription["has_scheduled_changes"] is True
    assert fake_razorpay.requests[-1].body == {"cancel_at_cycle_end": 1}


async def test_cancelling_an_ended_subscription_again_succeeds(fake_razorpay: FakeRazorpay) -> None:
    _, sub_id = await new_subscription(fake_razorpay)
    creds = fake_razorpay.credentials()
    await PROVIDER.cancel_subscription(creds, sub_id, at_period_end=False)

    await PROVIDER.cancel_subscription(creds, sub_id, at_period_end=False)

    assert fake_razorpay.subscriptions[sub_id]["status"] == "cancelled"
    assert [r.path.rsplit("/", 1)[-1] for r in fake_razorpay.requests[-2:]] == ["cancel", sub_id]


async def test_cancelling_an_unknown_subscription_is_refused(fake_razorpay: FakeRazorpay) -> None:
    with pytest.raises(ProviderError) as refused:
        await PROVIDER.cancel_subscription(
            fake_razorpay.credentials(), "sub_unknown000000000", at_period_end=False
        )
    assert not refused.value.transient


# --- lookup_payment ------------------------------------------------------------------------------


def lookup_for(req: CheckoutRequest, link_id: str) -> PaymentLookup:
    return PaymentLookup(req.payment_id, link_id, req.amount_minor, req.currency)


async def test_lookup_of_an_unpaid_link_says_nothing(fake_razorpay: FakeRazorpay) -> None:
    req, link_id = await new_link(fake_razorpay)

    facts = await PROVIDER.lookup_payment(fake_razorpay.credentials(), lookup_for(req, link_id))

    assert facts == []


async def test_lookup_of_a_paid_link_reports_its_captured_payment(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, link_id = await new_link(fake_razorpay)
    fake_razorpay.fail(link_id)
    fake_razorpay.pay(link_id)
    (payment,) = [p for p in fake_razorpay.payments.values() if p["status"] == "captured"]

    (fact,) = await PROVIDER.lookup_payment(fake_razorpay.credentials(), lookup_for(req, link_id))

    assert isinstance(fact, PaymentSucceeded)
    assert (fact.amount_minor, fact.currency) == (49_900, "INR")
    assert fact.provider_payment_id == payment["id"]
    assert fact.ref.payment_id == req.payment_id
    assert fact.ref.reference == link_id
    assert fact.ref.provider_payment_id == payment["id"]
    assert fact.ref.order_id == payment["order_id"]


@pytest.mark.parametrize(
    ("end", "fact_type"), [("expire", PaymentExpired), ("cancel", PaymentCanceled)]
)
async def test_lookup_of_an_ended_link_reports_the_end(
    fake_razorpay: FakeRazorpay, end: str, fact_type: type
) -> None:
    req, link_id = await new_link(fake_razorpay)
    getattr(fake_razorpay, end)(link_id)

    (fact,) = await PROVIDER.lookup_payment(fake_razorpay.credentials(), lookup_for(req, link_id))

    assert isinstance(fact, fact_type)
    assert isinstance(fact, PaymentExpired | PaymentCanceled)
    assert (fact.ref.payment_id, fact.ref.reference) == (req.payment_id, link_id)


async def test_lookup_of_an_unknown_link_is_a_permanent_error(fake_razorpay: FakeRazorpay) -> None:
    lookup = PaymentLookup(uuid.uuid4(), "plink_unknown0000000", 100, "INR")

    with pytest.raises(ProviderError) as refused:
        await PROVIDER.lookup_payment(fake_razorpay.credentials(), lookup)
    assert not refused.value.transient


# --- verify_webhook ------------------------------------------------------------------------------


def accepted(body: bytes, headers: dict[str, str], secrets: list[str]) -> bool:
    """Whether ``verify_webhook`` lets the delivery through (it raises InvalidSignature if not)."""
    try:
        PROVIDER.verify_webhook(body, {k.lower(): v for k, v in headers.items()}, secrets, now=NOW)
    except InvalidSignature:
        return False
    return True


async def paid_delivery(fake: FakeRazorpay) -> Delivery:
    _, link_id = await new_link(fake)
    return fake.pay(link_id)[0]


async def test_a_delivery_signed_with_the_secret_verifies(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)

    assert accepted(delivery.body, delivery.headers, [fake_razorpay.webhook_secret])


async def test_a_body_whose_json_re_encoding_differs_verifies_over_its_raw_bytes(
    fake_razorpay: FakeRazorpay,
) -> None:
    delivery = await paid_delivery(fake_razorpay)
    assert b"https:\\/\\/" in delivery.body  # Razorpay's PHP escapes slashes
    reencoded = json.dumps(json.loads(delivery.body), separators=(",", ":")).encode()
    assert reencoded != delivery.body

    assert accepted(delivery.body, delivery.headers, [fake_razorpay.webhook_secret])
    assert not accepted(reencoded, delivery.headers, [fake_razorpay.webhook_secret])


def test_a_body_with_spaces_and_unicode_escapes_verifies() -> None:
    body = b'{ "event" : "payment.captured",\n  "note": "caf\\u00e9 \\u20b9 \\/ done" }'
    secret = "whsec_unicode"

    assert accepted(body, {"X-Razorpay-Signature": sign(body, secret)}, [secret])


async def test_a_forged_signature_is_refused(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)
    headers = {**delivery.headers, "X-Razorpay-Signature": "ab" * 32}

    assert not accepted(delivery.body, headers, [fake_razorpay.webhook_secret])


async def test_a_delivery_signed_with_another_secret_is_refused(
    fake_razorpay: FakeRazorpay,
) -> None:
    delivery = await paid_delivery(fake_razorpay)

    assert not accepted(delivery.body, delivery.headers, ["whsec_someone_else"])


@pytest.mark.parametrize("secrets", [[], [""]], ids=["none", "empty"])
async def test_without_a_secret_nothing_verifies(
    fake_razorpay: FakeRazorpay, secrets: list[str]
) -> None:
    body = b'{"event":"payment.captured"}'
    # What an HMAC with an empty key gives: a receiver that used it would accept forgeries.
    headers = {"X-Razorpay-Signature": sign(body, "")}

    assert not accepted(body, headers, secrets)


async def test_a_delivery_without_signature_header_is_refused(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)
    headers = {k: v for k, v in delivery.headers.items() if k != "X-Razorpay-Signature"}

    assert not accepted(delivery.body, headers, [fake_razorpay.webhook_secret])


async def test_a_body_changed_by_one_byte_is_refused(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)
    tampered = delivery.body.replace(b'"amount":49900', b'"amount":49901', 1)
    assert len(tampered) == len(delivery.body)
    assert tampered != delivery.body

    assert not accepted(tampered, delivery.headers, [fake_razorpay.webhook_secret])


async def test_the_previous_secret_still_verifies_while_listed(fake_razorpay: FakeRazorpay) -> None:
    old = fake_razorpay.webhook_secret
    before = await paid_delivery(fake_razorpay)
    new = fake_razorpay.rotate_webhook_secret()
    after = await paid_delivery(fake_razorpay)

    assert accepted(before.body, before.headers, [new, old])
    assert accepted(after.body, after.headers, [new, old])
    assert not accepted(before.body, before.headers, [new])


# --- parse_webhook: top-ups ----------------------------------------------------------------------


async def test_one_payment_gives_three_events_that_each_find_the_same_payment(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, link_id = await new_link(fake_razorpay)
    deliveries = fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()

    facts = [only(d) for d in deliveries]

    assert [d.event for d in deliveries] == ["payment_link.paid", "payment.captured", "order.paid"]
    assert len({d.event_id for d in deliveries}) == 3
    for fact in facts:
        assert isinstance(fact, PaymentSucceeded)
        assert (fact.amount_minor, fact.currency) == (49_900, "INR")
        assert fact.provider_payment_id == payment["id"]
        assert fact.ref.payment_id == req.payment_id
        assert fact.ref.provider_payment_id == payment["id"]
        assert fact.ref.order_id == payment["order_id"]
    assert facts[0].ref.reference == link_id


async def test_parse_keeps_the_event_id_type_and_payload(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)

    event = PROVIDER.parse_webhook(delivery.body, delivery.lower_headers)

    assert event.event_id == delivery.event_id
    assert event.type == "payment_link.paid"
    assert event.payload == json.loads(delivery.body)


async def test_a_link_whose_reference_id_is_not_ours_is_found_by_notes(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, link_id = await new_link(fake_razorpay)
    fake_razorpay.links[link_id]["reference_id"] = "TS35"
    delivery = fake_razorpay.pay(link_id)[0]

    fact = only(delivery)

    assert fact.ref.payment_id == req.payment_id


async def test_a_captured_payment_without_our_notes_is_found_by_its_ids(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, link_id = await new_link(fake_razorpay)
    fake_razorpay.links[link_id]["notes"] = []
    captured = fake_razorpay.pay(link_id)[1]
    (payment,) = fake_razorpay.payments.values()

    fact = only(captured)

    assert fact.ref.payment_id is None
    assert (fact.ref.provider_payment_id, fact.ref.order_id) == (payment["id"], payment["order_id"])


async def test_a_paid_amount_other_than_the_links_is_reported_as_paid(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, link_id = await new_link(fake_razorpay)

    facts = [only(d) for d in fake_razorpay.pay(link_id, amount=100, currency="USD")]

    assert {(f.amount_minor, f.currency) for f in facts} == {(100, "USD")}


async def test_payment_failed_gives_the_reason(fake_razorpay: FakeRazorpay) -> None:
    req, link_id = await new_link(fake_razorpay)

    fact = only(fake_razorpay.fail(link_id, reason="Card declined by bank"))

    assert isinstance(fact, PaymentFailed)
    assert fact.reason == "Card declined by bank"
    assert fact.ref.payment_id == req.payment_id
    assert fact.checkout_open is True, "the link can still be paid"


async def test_an_expired_link_is_payment_expired(fake_razorpay: FakeRazorpay) -> None:
    req, link_id = await new_link(fake_razorpay)

    fact = only(fake_razorpay.expire(link_id))

    assert isinstance(fact, PaymentExpired)
    assert (fact.ref.payment_id, fact.ref.reference) == (req.payment_id, link_id)


async def test_a_cancelled_link_is_payment_canceled(fake_razorpay: FakeRazorpay) -> None:
    req, link_id = await new_link(fake_razorpay)

    fact = only(fake_razorpay.cancel(link_id))

    assert isinstance(fact, PaymentCanceled)
    assert (fact.ref.payment_id, fact.ref.reference) == (req.payment_id, link_id)


async def test_refunds_report_the_cumulative_amount_refunded(fake_razorpay: FakeRazorpay) -> None:
    req, link_id = await new_link(fake_razorpay)
    fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()

    first = only(fake_razorpay.refund(payment["id"], 10_000))
    second = only(fake_razorpay.refund(payment["id"], 5_000))

    assert isinstance(first, PaymentRefunded)
    assert (first.amount_refunded_minor, second.amount_refunded_minor) == (10_000, 15_000)
    assert second.currency == "INR"
    assert second.ref.provider_payment_id == payment["id"]
    assert second.ref.payment_id == req.payment_id


async def test_a_refund_without_its_payment_reports_the_refund_amount(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, link_id = await new_link(fake_razorpay)
    fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()
    fake_razorpay.refund(payment["id"], 10_000)
    refund = fake_razorpay.refund(payment["id"], 5_000).payload["payload"]["refund"]["entity"]

    fact = only(fake_razorpay.event("refund.processed", refund=refund))

    assert fact.amount_refunded_minor == 5_000
    assert fact.ref.provider_payment_id == payment["id"]


@pytest.mark.parametrize(
    ("event", "status", "state"),
    [
        # Razorpay deducts a chargeback's amount when it is raised (Deduct at Onset).
        ("created", None, "withdrawn"),
        ("under_review", None, "withdrawn"),
        ("action_required", None, "withdrawn"),
        ("won", None, "won"),
        ("lost", None, "lost"),
        ("closed", "won", "won"),
        ("closed", "lost", "lost"),
    ],
)
async def test_dispute_events_give_the_dispute_state(
    fake_razorpay: FakeRazorpay, event: str, status: str | None, state: str
) -> None:
    req, link_id = await new_link(fake_razorpay)
    fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()

    fact = only(fake_razorpay.dispute(payment["id"], event, status=status, amount=20_000))

    assert isinstance(fact, DisputeChanged)
    assert fact.state == state
    assert (fact.amount_minor, fact.currency) == (20_000, "INR")
    assert fact.dispute_id == next(iter(fake_razorpay.disputes))
    assert fact.ref.provider_payment_id == payment["id"]
    assert fact.ref.payment_id == req.payment_id


async def test_a_retrieval_request_is_an_inquiry_that_moves_no_money(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, link_id = await new_link(fake_razorpay)
    fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()

    fact = only(fake_razorpay.dispute(payment["id"], "created", phase="retrieval"))

    assert isinstance(fact, DisputeChanged)
    assert fact.state == "inquiry"


async def test_a_dispute_closed_without_a_verdict_gives_no_fact(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, link_id = await new_link(fake_razorpay)
    fake_razorpay.pay(link_id)
    (payment,) = fake_razorpay.payments.values()
    fake_razorpay.dispute(payment["id"], "created", phase="retrieval")

    delivery = fake_razorpay.dispute(payment["id"], "closed", phase="retrieval")

    assert delivery.payload["payload"]["dispute"]["entity"]["status"] == "closed"
    assert parse(delivery) == []


# --- parse_webhook: subscriptions ----------------------------------------------------------------


async def test_subscription_activated_is_active_with_its_period(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, sub_id = await new_subscription(fake_razorpay)

    fact = only(fake_razorpay.activate(sub_id))

    subscription = fake_razorpay.subscriptions[sub_id]
    assert isinstance(fact, SubscriptionStatusChanged)
    assert fact.status == "active"
    assert fact.ref.subscription_id == req.subscription_id
    assert fact.ref.provider_subscription_id == sub_id
    assert fact.period_start == datetime.fromtimestamp(subscription["current_start"], tz=UTC)
    assert fact.period_end is not None


async def test_each_charge_is_one_period_paid_for_the_next_period(
    fake_razorpay: FakeRazorpay,
) -> None:
    req, sub_id = await new_subscription(fake_razorpay)
    fake_razorpay.activate(sub_id)

    first, second = only(fake_razorpay.charge(sub_id)), only(fake_razorpay.charge(sub_id))

    assert isinstance(first, SubscriptionPeriodPaid)
    assert isinstance(second, SubscriptionPeriodPaid)
    assert first.charge_id != second.charge_id
    assert first.charge_id == first.provider_payment_id
    assert first.charge_id in fake_razorpay.payments
    assert (first.amount_minor, first.currency) == (99_900, "INR")
    assert second.period_start == first.period_end
    assert second.period_end - second.period_start == timedelta(days=30)
    assert second.ref.subscription_id == req.subscription_id
    assert second.ref.provider_subscription_id == sub_id


async def test_a_subscriptions_captured_payment_is_not_a_top_up(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, sub_id = await new_subscription(fake_razorpay)
    charged = fake_razorpay.charge(sub_id)
    payment = charged.payload["payload"]["payment"]["entity"]
    assert payment["invoice_id"]
    assert payment["notes"] == []

    assert parse(fake_razorpay.captured(payment["id"])) == []
    order = {"id": payment["order_id"], "entity": "order", "amount": 99_900, "amount_paid": 99_900,
             "currency": "INR", "notes": [], "receipt": None, "status": "paid"}  # fmt: skip
    assert parse(fake_razorpay.event("order.paid", payment=payment, order=order)) == []


async def test_a_payment_noted_with_our_subscription_is_not_a_top_up(
    fake_razorpay: FakeRazorpay,
) -> None:
    _, sub_id = await new_subscription(fake_razorpay)
    payment = fake_razorpay.charge(sub_id).payload["payload"]["payment"]["entity"]
    payment.update(invoice_id=None, notes={"creditd_subscription_id": str(uuid.uuid4())})

    assert parse(fake_razorpay.event("payment.captured", payment=payment)) == []


@pytest.mark.parametrize(
    ("change", "status"),
    [("pending", "past_due"), ("halt", "halted"), ("cancel", "ended"), ("complete", "ended")],
)
async def test_subscription_status_events(
    fake_razorpay: FakeRazorpay, change: str, status: str
) -> None:
    req, sub_id = await new_subscription(fake_razorpay)
    fake_razorpay.activate(sub_id)
    fake_razorpay.charge(sub_id)

    fact = only(getattr(fake_razorpay, change)(sub_id))

    assert isinstance(fact, SubscriptionStatusChanged)
    assert fact.status == status
    assert fact.ref.subscription_id == req.subscription_id


# --- parse_webhook: the rest ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "event", ["payment.authorized", "refund.created", "subscription.authenticated", "invoice.paid"]
)
async def test_other_event_types_give_no_facts(fake_razorpay: FakeRazorpay, event: str) -> None:
    delivery = fake_razorpay.event(event, payment={"id": "pay_x", "amount": 1, "currency": "INR"})

    parsed = PROVIDER.parse_webhook(delivery.body, delivery.lower_headers)

    assert parsed.facts == []
    assert (parsed.type, parsed.event_id) == (event, delivery.event_id)


async def test_a_delivery_without_event_id_is_malformed(fake_razorpay: FakeRazorpay) -> None:
    delivery = await paid_delivery(fake_razorpay)
    headers = {k: v for k, v in delivery.lower_headers.items() if k != "x-razorpay-event-id"}

    with pytest.raises(MalformedWebhook):
        PROVIDER.parse_webhook(delivery.body, headers)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"payload": {}}', b'{"event": "x", "payload": [1]}'],
    ids=["text", "not utf-8", "array", "no event", "payload not an object"],
)
def test_a_body_that_is_no_razorpay_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        PROVIDER.parse_webhook(body, {"x-razorpay-event-id": "evt_1"})


_PAY = {"id": "pay_1", "amount": 100, "currency": "INR"}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("payment_link.paid", {}),
        ("payment.captured", {"payment": {"entity": {"id": "pay_1", "currency": "INR"}}}),
        ("payment.captured", {"payment": {"entity": {**_PAY, "amount": 1.5}}}),
        (
            "subscription.charged",
            {"subscription": {"entity": {"id": "sub_1"}}, "payment": {"entity": _PAY}},
        ),
    ],
    ids=["no link", "no amount", "fractional amount", "no period"],
)
def test_a_known_event_missing_what_its_fact_needs_is_malformed(
    event: str, payload: dict[str, Any]
) -> None:
    body = php_json({"entity": "event", "event": event, "payload": payload})

    with pytest.raises(MalformedWebhook):
        PROVIDER.parse_webhook(body, {"x-razorpay-event-id": "evt_1"})
