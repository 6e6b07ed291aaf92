"""Razorpay webhooks: verify the signature over the raw bytes, translate events into facts.

Razorpay signs ``hex(HMAC-SHA256(webhook_secret, raw_body))`` into ``X-Razorpay-Signature``.
The body is PHP-encoded JSON (``\\/`` for ``/``, ``\\uXXXX`` escapes, ``[]`` for empty notes), so
any re-serialisation changes the bytes: the HMAC is only ever computed over the body exactly as
received. There is no timestamp in the scheme; a replayed delivery carries the same
``x-razorpay-event-id`` and is dropped by the event store upstream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.integrations.base import (
    DisputeChanged,
    DisputeState,
    Fact,
    InvalidSignature,
    MalformedWebhook,
    PaymentCanceled,
    PaymentExpired,
    PaymentFailed,
    PaymentRef,
    PaymentRefunded,
    PaymentSucceeded,
    ProviderEvent,
    SubscriptionPeriodPaid,
    SubscriptionRef,
    SubscriptionStatus,
    SubscriptionStatusChanged,
)

SIGNATURE_HEADER = "x-razorpay-signature"
EVENT_ID_HEADER = "x-razorpay-event-id"

# Our ids travel in notes (and a link's reference_id) so that any one event finds the record.
NOTE_PAYMENT_ID = "creditd_payment_id"
NOTE_PROJECT_ID = "creditd_project_id"
NOTE_USER_ID = "creditd_user_id"
NOTE_SUBSCRIPTION_ID = "creditd_subscription_id"

Entity = dict[str, Any]


def signature(body: bytes, secret: str) -> str:
    """What Razorpay puts in ``X-Razorpay-Signature`` for ``body`` signed with ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    """Raise ``InvalidSignature`` unless one of ``secrets`` signed exactly ``body``."""
    # An empty secret would make the HMAC computable by anyone: it counts as no secret.
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise InvalidSignature("no webhook secret is configured for razorpay")
    given = headers.get(SIGNATURE_HEADER, "").strip()
    if not given:
        raise InvalidSignature("the X-Razorpay-Signature header is missing")
    given_bytes = given.encode("utf-8", "replace")
    # Every secret is tried (no early exit), so timing does not tell which one is current.
    matched = False
    for secret in usable:
        matched |= hmac.compare_digest(signature(body, secret).encode(), given_bytes)
    if not matched:
        raise InvalidSignature("the X-Razorpay-Signature does not match the body")


def parse(body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
    """Translate a verified delivery into facts (none for event types creditd ignores).

    A known event missing what its fact needs (an amount, a period) raises ``MalformedWebhook``
    rather than being stored as ignored: a signed event Razorpay sends without those is not one
    this code understands, and that must be loud, not a silently lost payment.
    """
    event_id = headers.get(EVENT_ID_HEADER, "").strip()
    if not event_id:
        raise MalformedWebhook("the x-razorpay-event-id header is missing")
    try:
        document = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise MalformedWebhook("the body is not JSON") from exc
    if not isinstance(document, dict):
        raise MalformedWebhook("the body is not a JSON object")
    event_type = document.get("event")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedWebhook("the body has no event type")
    payload = document.get("payload") or {}
    if not isinstance(payload, dict):
        raise MalformedWebhook("the payload is not an object")
    translate = _TRANSLATORS.get(event_type)
    facts = translate(event_type, payload) if translate is not None else []
    return ProviderEvent(event_id=event_id, type=event_type, facts=facts, payload=document)


# --- reading payloads ---------------------------------------------------------------------------


def entity(payload: Mapping[str, Any], name: str) -> Entity | None:
    """``payload[name].entity`` if it is there and an object."""
    wrapper = payload.get(name)
    if not isinstance(wrapper, dict):
        return None
    found = wrapper.get("entity")
    return found if isinstance(found, dict) else None


def _required(payload: Mapping[str, Any], name: str) -> Entity:
    found = entity(payload, name)
    if found is None:
        raise MalformedWebhook(f"the payload has no {name} entity")
    return found


def notes(source: Entity | None) -> dict[str, str]:
    """An entity's notes; Razorpay's PHP encodes empty ones as ``[]``."""
    if source is None:
        return {}
    value = source.get("notes")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def text(source: Entity | None, key: str) -> str | None:
    if source is None:
        return None
    value = source.get(key)
    return value if isinstance(value, str) and value else None


def as_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def minor(source: Entity | None, key: str) -> int:
    """A required amount in minor units (an integer; never a float)."""
    value = None if source is None else source.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedWebhook(f"{key} is missing or not a whole number of minor units")
    return value


def currency(*sources: Entity | None) -> str:
    for source in sources:
        found = text(source, "currency")
        if found is not None:
            return found.upper()
    raise MalformedWebhook("the payload has no currency")


def _timestamp(source: Entity, key: str) -> datetime:
    value = source.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedWebhook(f"{key} is missing or not a unix timestamp")
    return datetime.fromtimestamp(value, tz=UTC)


def _first_payment_id(*candidates: str | None) -> uuid.UUID | None:
    for candidate in candidates:
        found = as_uuid(candidate)
        if found is not None:
            return found
    return None


def _is_subscription_payment(*sources: Entity | None) -> bool:
    """A subscription's payment (billed through an invoice, or noted with our subscription id)
    is credited by ``subscription.charged``; as a top-up it would be credited twice."""
    for source in sources:
        if NOTE_PAYMENT_ID in notes(source):
            return False
    for source in sources:
        if NOTE_SUBSCRIPTION_ID in notes(source) or text(source, "invoice_id") is not None:
            return True
    return False


def _payment_ref(payment: Entity | None, order: Entity | None = None) -> PaymentRef:
    return PaymentRef(
        payment_id=_first_payment_id(
            notes(payment).get(NOTE_PAYMENT_ID),
            notes(order).get(NOTE_PAYMENT_ID),
            text(order, "receipt"),  # a payment link's order carries its reference_id here
        ),
        provider_payment_id=text(payment, "id"),
        order_id=text(order, "id") or text(payment, "order_id"),
    )


def link_ref(
    link: Entity, *, payment: Entity | None = None, order: Entity | None = None
) -> PaymentRef:
    """Refs of a payment link: its reference_id is our payment id (when it is a UUID at all)."""
    return PaymentRef(
        payment_id=_first_payment_id(
            text(link, "reference_id"),
            notes(link).get(NOTE_PAYMENT_ID),
            notes(payment).get(NOTE_PAYMENT_ID),
            notes(order).get(NOTE_PAYMENT_ID),
        ),
        reference=text(link, "id"),
        provider_payment_id=text(payment, "id"),
        order_id=text(link, "order_id") or text(payment, "order_id") or text(order, "id"),
    )


# --- translators, one per event type ------------------------------------------------------------


def _payment_link_paid(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    link = _required(payload, "payment_link")
    payment = entity(payload, "payment")
    order = entity(payload, "order")
    amount = minor(payment, "amount") if payment is not None else minor(link, "amount_paid")
    return [
        PaymentSucceeded(
            ref=link_ref(link, payment=payment, order=order),
            amount_minor=amount,
            currency=currency(payment, link),
            provider_payment_id=text(payment, "id"),
        )
    ]


def _payment_captured(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    payment = _required(payload, "payment")
    if _is_subscription_payment(payment):
        return []
    return [
        PaymentSucceeded(
            ref=_payment_ref(payment),
            amount_minor=minor(payment, "amount"),
            currency=currency(payment),
            provider_payment_id=text(payment, "id"),
        )
    ]


def _order_paid(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    order = _required(payload, "order")
    payment = entity(payload, "payment")
    if _is_subscription_payment(payment, order):
        return []
    amount = minor(payment, "amount") if payment is not None else minor(order, "amount_paid")
    return [
        PaymentSucceeded(
            ref=_payment_ref(payment, order),
            amount_minor=amount,
            currency=currency(payment, order),
            provider_payment_id=text(payment, "id"),
        )
    ]


def _payment_failed(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    payment = _required(payload, "payment")
    if _is_subscription_payment(payment):
        return []  # a failed renewal arrives as subscription.pending / .halted
    # A failed attempt leaves the payment link payable: the customer may try again on it.
    return [
        PaymentFailed(
            ref=_payment_ref(payment),
            reason=text(payment, "error_description"),
            checkout_open=True,
        )
    ]


def _payment_link_ended(event_type: str, payload: Mapping[str, Any]) -> list[Fact]:
    ref = link_ref(_required(payload, "payment_link"))
    if event_type == "payment_link.expired":
        return [PaymentExpired(ref=ref)]
    return [PaymentCanceled(ref=ref)]


def _refund_processed(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    refund = _required(payload, "refund")
    payment = entity(payload, "payment")
    this_refund = minor(refund, "amount")
    # Facts carry the cumulative refunded amount. Razorpay's refund.processed includes the
    # payment with ``amount_refunded`` (all refunds so far); without it, this refund's amount is
    # a lower bound of the total, which max()-merging upstream keeps safe (never over-claws).
    total = this_refund
    if payment is not None and isinstance(payment.get("amount_refunded"), int):
        total = max(this_refund, minor(payment, "amount_refunded"))
    ref = _payment_ref(payment)
    return [
        PaymentRefunded(
            ref=PaymentRef(
                payment_id=ref.payment_id,
                provider_payment_id=text(refund, "payment_id") or ref.provider_payment_id,
                order_id=ref.order_id,
            ),
            amount_refunded_minor=total,
            currency=currency(refund, payment),
        )
    ]


_DISPUTE_STATES: dict[str, DisputeState] = {
    "payment.dispute.created": "withdrawn",
    "payment.dispute.under_review": "withdrawn",
    "payment.dispute.action_required": "withdrawn",
    "payment.dispute.won": "won",
    "payment.dispute.lost": "lost",
}
# Razorpay deducts a chargeback's amount from the merchant's balance when it is raised
# ("Deduct at Onset"), and gives it back when the merchant wins: so the credits go when the
# dispute opens and come back on "won", as with Stripe's funds_withdrawn/funds_reinstated. A
# retrieval (the bank only asks for information) moves no money.
_NO_MONEY_PHASES = frozenset({"retrieval"})


def _dispute(event_type: str, payload: Mapping[str, Any]) -> list[Fact]:
    dispute = _required(payload, "dispute")
    payment = entity(payload, "payment")
    state = _DISPUTE_STATES.get(event_type)
    if state is None:  # payment.dispute.closed: only the dispute's final status says how
        status = text(dispute, "status")
        if status == "won":
            state = "won"
        elif status == "lost":
            state = "lost"
        else:
            return []
    if state == "withdrawn" and text(dispute, "phase") in _NO_MONEY_PHASES:
        state = "inquiry"
    ref = _payment_ref(payment)
    return [
        DisputeChanged(
            ref=PaymentRef(
                payment_id=ref.payment_id,
                provider_payment_id=text(dispute, "payment_id") or ref.provider_payment_id,
                order_id=ref.order_id,
            ),
            state=state,
            amount_minor=minor(dispute, "amount"),
            currency=currency(dispute, payment),
            dispute_id=text(dispute, "id"),
        )
    ]


def subscription_ref(subscription: Entity) -> SubscriptionRef:
    return SubscriptionRef(
        subscription_id=as_uuid(notes(subscription).get(NOTE_SUBSCRIPTION_ID)),
        provider_subscription_id=text(subscription, "id"),
    )


_SUBSCRIPTION_STATUSES: dict[str, SubscriptionStatus] = {
    "subscription.activated": "active",
    "subscription.pending": "past_due",
    "subscription.halted": "halted",
    "subscription.cancelled": "ended",
    "subscription.completed": "ended",
}


def _subscription_status(event_type: str, payload: Mapping[str, Any]) -> list[Fact]:
    subscription = _required(payload, "subscription")
    has_period = isinstance(subscription.get("current_start"), int) and isinstance(
        subscription.get("current_end"), int
    )
    return [
        SubscriptionStatusChanged(
            ref=subscription_ref(subscription),
            status=_SUBSCRIPTION_STATUSES[event_type],
            period_start=_timestamp(subscription, "current_start") if has_period else None,
            period_end=_timestamp(subscription, "current_end") if has_period else None,
        )
    ]


def _subscription_charged(_: str, payload: Mapping[str, Any]) -> list[Fact]:
    subscription = _required(payload, "subscription")
    payment = _required(payload, "payment")
    payment_id = text(payment, "id")
    if payment_id is None:
        raise MalformedWebhook("subscription.charged has a payment without an id")
    return [
        SubscriptionPeriodPaid(
            ref=subscription_ref(subscription),
            charge_id=payment_id,
            provider_payment_id=payment_id,
            amount_minor=minor(payment, "amount"),
            currency=currency(payment),
            period_start=_timestamp(subscription, "current_start"),
            period_end=_timestamp(subscription, "current_end"),
        )
    ]


_TRANSLATORS: dict[str, Callable[[str, Mapping[str, Any]], list[Fact]]] = {
    "payment_link.paid": _payment_link_paid,
    "payment.captured": _payment_captured,
    "order.paid": _order_paid,
    "payment.failed": _payment_failed,
    "payment_link.expired": _payment_link_ended,
    "payment_link.cancelled": _payment_link_ended,
    "refund.processed": _refund_processed,
    **dict.fromkeys(
        [*_DISPUTE_STATES, "payment.dispute.closed"],
        _dispute,
    ),
    "subscription.charged": _subscription_charged,
    **dict.fromkeys(_SUBSCRIPTION_STATUSES, _subscription_status),
}
