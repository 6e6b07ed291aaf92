"""Stripe webhooks: the ``Stripe-Signature`` check and the translation of events into facts.

Field names follow API version ``2026-10-28`` (the SDK's pin, see ``client.API_VERSION``): an
invoice names its subscription under ``parent.subscription_details`` (2025-03-31 and later), a
subscription's period lives on its items, and a Checkout Session creates its PaymentIntent only
when it is paid.
"""

from __future__ import annotations

import dataclasses
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
    PaymentExpired,
    PaymentFailed,
    PaymentIdentified,
    PaymentPending,
    PaymentRef,
    PaymentRefunded,
    PaymentSucceeded,
    ProviderEvent,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionRef,
    SubscriptionStatus,
    SubscriptionStatusChanged,
)

TOLERANCE_SECONDS = 300
SIGNATURE_HEADER = "stripe-signature"

# Metadata keys creditd puts on everything it creates at Stripe (client.py), so that webhooks
# about the objects Stripe derives from them (charges, disputes, invoices) find their way back.
PAYMENT_ID_KEY = "creditd_payment_id"
SUBSCRIPTION_ID_KEY = "creditd_subscription_id"
PROJECT_ID_KEY = "creditd_project_id"
USER_ID_KEY = "creditd_user_id"


# --- signature -------------------------------------------------------------------------------


def signature_header(body: bytes, secret: str, timestamp: int) -> str:
    """The header Stripe would send for ``body`` signed with ``secret`` at ``timestamp``."""
    return f"t={timestamp},v1={_sign(body, secret, timestamp)}"


def _sign(body: bytes, secret: str, timestamp: int) -> str:
    # Over the bytes as received: Stripe signs "{t}.{raw body}", and re-serialised JSON would
    # differ in whitespace and key order.
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
) -> None:
    """Raise ``InvalidSignature`` unless a ``v1`` signature in the header is one of ``secrets``'
    HMAC of ``body`` and its timestamp is within 300 s of ``now`` (either side)."""
    usable = [s for s in secrets if s]
    if not usable:
        # Never verify-skip: a project without a secret cannot receive webhooks at all.
        raise InvalidSignature("no webhook secret configured")
    header = headers.get(SIGNATURE_HEADER) or next(
        (v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None
    )
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    timestamp, signatures = _parse_header(header)
    # The SDK's own check (stripe.WebhookSignature) reads the wall clock and accepts any future
    # timestamp; a replay window has to be bounded on both sides and testable.
    if abs(now.timestamp() - timestamp) > TOLERANCE_SECONDS:
        raise InvalidSignature("timestamp outside the tolerance")
    expected = [_sign(body, secret, timestamp) for secret in usable]
    # Every pair is compared (no early exit) so timing tells nothing about which one matched.
    matched = False
    for candidate in signatures:
        for want in expected:
            matched |= hmac.compare_digest(want.encode(), candidate.encode())
    if not matched:
        raise InvalidSignature("no v1 signature matches")


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isascii() or not value.isdigit():
                raise InvalidSignature("malformed timestamp")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        raise InvalidSignature("no timestamp in Stripe-Signature")
    if not signatures:
        raise InvalidSignature("no v1 signature in Stripe-Signature")
    return timestamp, signatures


# --- parsing ---------------------------------------------------------------------------------


def parse(body: bytes) -> ProviderEvent:
    """Translate a verified Stripe event into facts (none for types creditd does not act on)."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedWebhook("body is not JSON") from exc
    if not isinstance(event, dict):
        raise MalformedWebhook("body is not a JSON object")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedWebhook("event has no id")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedWebhook("event has no type")
    handler = _HANDLERS.get(event_type)
    facts: list[Fact] = []
    if handler is not None:
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise MalformedWebhook(f"{event_type} without data.object")
        try:
            facts = handler(obj)
        except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
            raise MalformedWebhook(f"{event_type}: {exc}") from exc
    return ProviderEvent(event_id=event_id, type=event_type, facts=facts, payload=event)


def session_facts(session: Mapping[str, Any], *, payment_id: uuid.UUID) -> list[Fact]:
    """What a Checkout Session in ``payment`` mode says now about our ``payment_id``
    (reconciliation's lookup); ``ValueError`` if the session names another payment.

    ``open`` is still waiting (nothing); ``complete`` and paid is a success, with any refund
    the charge already had; complete but unpaid is an asynchronous method still clearing,
    unless its PaymentIntent (when expanded) shows it failed.
    """
    ref = _payment_ref(session)
    if ref.payment_id not in (None, payment_id):
        raise ValueError(f"session {ref.reference} belongs to payment {ref.payment_id}")
    ref = dataclasses.replace(ref, payment_id=payment_id)
    status = session.get("status")
    if status == "expired":
        return [PaymentExpired(ref)]
    if status != "complete":
        return []
    if session.get("payment_status") == "paid":
        facts: list[Fact] = [_succeeded(session, ref)]
        charge = _expanded(session.get("payment_intent"), "latest_charge")
        if charge is not None and _int(charge.get("amount_refunded", 0)) > 0:
            facts.append(_refunded(charge, payment_id=payment_id))
        return facts
    if session.get("payment_status") == "unpaid":
        intent = session.get("payment_intent")
        if isinstance(intent, dict) and intent.get("status") in _FAILED_INTENT:
            return [PaymentFailed(ref, reason=str(intent.get("status")))]
        return [PaymentPending(ref)]
    return []


# A PaymentIntent of a completed session that fell back to these did not clear.
_FAILED_INTENT = frozenset({"requires_payment_method", "canceled"})


def _checkout_completed(session: dict[str, Any]) -> list[Fact]:
    mode = session.get("mode")
    if mode == "subscription":
        provider_sub = _id(session.get("subscription"))
        if provider_sub is None:
            return []
        return [
            SubscriptionLinked(
                ref=SubscriptionRef(
                    subscription_id=_our_subscription_id(session),
                    provider_subscription_id=provider_sub,
                    reference=_str(session["id"]),
                ),
                provider_subscription_id=provider_sub,
                provider_customer_id=_id(session.get("customer")),
            )
        ]
    if mode != "payment":
        return []
    payment_status = session.get("payment_status")
    if payment_status == "paid":
        return [_succeeded(session)]
    if payment_status == "unpaid":  # an asynchronous method (bank debit) has not cleared yet
        return [PaymentPending(_payment_ref(session))]
    # "no_payment_required" needs a 100 % discount, which creditd never offers: nothing paid.
    return []


def _async_succeeded(session: dict[str, Any]) -> list[Fact]:
    return [_succeeded(session)] if session.get("mode") == "payment" else []


def _async_failed(session: dict[str, Any]) -> list[Fact]:
    if session.get("mode") != "payment":
        return []
    return [PaymentFailed(_payment_ref(session), reason="async_payment_failed")]


def _checkout_expired(session: dict[str, Any]) -> list[Fact]:
    mode = session.get("mode")
    if mode == "payment":
        return [PaymentExpired(_payment_ref(session))]
    if mode == "subscription":
        # The checkout was abandoned: no provider subscription will ever exist for it.
        ref = SubscriptionRef(
            subscription_id=_our_subscription_id(session), reference=_str(session["id"])
        )
        return [SubscriptionStatusChanged(ref, "ended")]
    return []


# The invoices that pay for a subscription period; any other (a one-off "manual" invoice,
# "subscription_update" prorations, a threshold charge) is money on the subscription that
# buys no period.
_PERIOD_REASONS = frozenset({"subscription_create", "subscription_cycle"})


def _invoice_paid(invoice: dict[str, Any]) -> list[Fact]:
    ref = _invoice_subscription(invoice)
    if ref is None:
        return []  # an invoice outside a subscription (one-off, quote) buys no credits here
    period = _period_line(invoice)
    buys_period = invoice.get("billing_reason") in _PERIOD_REASONS and period is not None
    if period is None:
        # Only for the record: a payment that buys no period is not placed in time.
        period = _time(invoice["period_start"]), _time(invoice["period_end"])
    return [
        SubscriptionPeriodPaid(
            ref=ref,
            charge_id=_str(invoice["id"]),
            provider_payment_id=_invoice_payment_intent(invoice),
            amount_minor=_int(invoice["amount_paid"]),
            currency=_currency(invoice["currency"]),
            period_start=period[0],
            period_end=period[1],
            buys_period=buys_period,
        )
    ]


def _invoice_payment_paid(row: dict[str, Any]) -> list[Fact]:
    # invoice.paid no longer carries its payments (expand-only since 2025-03-31), and a
    # Charge/PaymentIntent no longer names its invoice: this event is the only link from the
    # invoice (the subscription payment's reference) to the intent refunds and disputes name.
    if row.get("status") != "paid":
        return []
    payment = row.get("payment")
    if not isinstance(payment, dict) or payment.get("type") != "payment_intent":
        return []  # a charge without intent or an out-of-band record: nothing refunds find
    intent = _id(payment.get("payment_intent"))
    invoice = _id(row.get("invoice"))
    if intent is None or invoice is None:
        return []
    return [PaymentIdentified(ref=PaymentRef(reference=invoice), provider_payment_id=intent)]


def _invoice_payment_failed(invoice: dict[str, Any]) -> list[Fact]:
    ref = _invoice_subscription(invoice)
    return [] if ref is None else [SubscriptionStatusChanged(ref, "past_due")]


_SUBSCRIPTION_STATUS: dict[str, SubscriptionStatus] = {
    "active": "active",
    "trialing": "active",
    "past_due": "past_due",
    "unpaid": "halted",  # Stripe stopped retrying and keeps the invoices open
    "paused": "halted",  # a trial ended without a payment method: nothing is being paid
    "canceled": "ended",
    "incomplete_expired": "ended",
    # "incomplete": the first payment is still being attempted; invoice.paid will tell.
}


def _subscription_updated(sub: dict[str, Any]) -> list[Fact]:
    status = _SUBSCRIPTION_STATUS.get(str(sub.get("status")))
    if status is None:
        return []
    # A scheduled end (at period end, or at a set time) is "canceled" in creditd's terms; the
    # subscription keeps running until Stripe deletes it.
    scheduled = bool(sub.get("cancel_at_period_end")) or sub.get("cancel_at") is not None
    if status == "active" and scheduled:
        status = "canceled"
    start, end = _subscription_period(sub)
    return [
        SubscriptionStatusChanged(
            ref=_subscription_ref(sub),
            status=status,
            cancel_at_period_end=scheduled,
            period_start=start,
            period_end=end,
        )
    ]


def _subscription_deleted(sub: dict[str, Any]) -> list[Fact]:
    return [SubscriptionStatusChanged(ref=_subscription_ref(sub), status="ended")]


def _charge_refunded(charge: dict[str, Any]) -> list[Fact]:
    return [_refunded(charge, payment_id=None)]


def _dispute(state_of: Callable[[dict[str, Any]], DisputeState | None]) -> _Handler:
    def handle(dispute: dict[str, Any]) -> list[Fact]:
        state = state_of(dispute)
        if state is None:
            return []
        return [
            DisputeChanged(
                ref=PaymentRef(
                    provider_payment_id=_id(dispute.get("payment_intent"))
                    or _id(dispute.get("charge"))
                ),
                state=state,
                amount_minor=_int(dispute["amount"]),
                currency=_currency(dispute["currency"]),
                dispute_id=_str(dispute["id"]),
            )
        ]

    return handle


def _dispute_created(dispute: dict[str, Any]) -> DisputeState:
    # warning_* is an inquiry (retrieval request): no money has moved and may never move.
    return "inquiry" if str(dispute.get("status", "")).startswith("warning_") else "open"


def _dispute_closed(dispute: dict[str, Any]) -> DisputeState | None:
    status = dispute.get("status")
    if status in ("won", "lost"):
        return "won" if status == "won" else "lost"
    if status == "warning_closed":
        return "inquiry"
    # "prevented": the merchant refunded before it became a dispute; charge.refunded says that.
    return None


_Handler = Callable[[dict[str, Any]], list[Fact]]

_HANDLERS: dict[str, _Handler] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _async_succeeded,
    "checkout.session.async_payment_failed": _async_failed,
    "checkout.session.expired": _checkout_expired,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "invoice_payment.paid": _invoice_payment_paid,
    "customer.subscription.updated": _subscription_updated,
    "customer.subscription.deleted": _subscription_deleted,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute(_dispute_created),
    "charge.dispute.funds_withdrawn": _dispute(lambda _: "withdrawn"),
    "charge.dispute.funds_reinstated": _dispute(lambda _: "reinstated"),
    "charge.dispute.closed": _dispute(_dispute_closed),
}


# --- field helpers ---------------------------------------------------------------------------


def _succeeded(session: Mapping[str, Any], ref: PaymentRef | None = None) -> PaymentSucceeded:
    ref = ref or _payment_ref(session)
    return PaymentSucceeded(
        ref=ref,
        amount_minor=_int(session["amount_total"]),
        currency=_currency(session["currency"]),
        provider_payment_id=ref.provider_payment_id,
    )


def _refunded(charge: Mapping[str, Any], *, payment_id: uuid.UUID | None) -> PaymentRefunded:
    ref = PaymentRef(
        payment_id=payment_id or _uuid(_metadata(charge).get(PAYMENT_ID_KEY)),
        # Subscription charges carry no creditd id: their payment is found by the intent.
        provider_payment_id=_id(charge.get("payment_intent")) or _str(charge["id"]),
    )
    return PaymentRefunded(
        ref=ref,
        amount_refunded_minor=_int(charge["amount_refunded"]),
        currency=_currency(charge["currency"]),
    )


def _payment_ref(session: Mapping[str, Any]) -> PaymentRef:
    return PaymentRef(
        payment_id=_uuid(session.get("client_reference_id"))
        or _uuid(_metadata(session).get(PAYMENT_ID_KEY)),
        reference=_str(session["id"]),
        provider_payment_id=_id(session.get("payment_intent")),
    )


def _our_subscription_id(session: Mapping[str, Any]) -> uuid.UUID | None:
    return _uuid(session.get("client_reference_id")) or _uuid(
        _metadata(session).get(SUBSCRIPTION_ID_KEY)
    )


def _subscription_ref(sub: Mapping[str, Any]) -> SubscriptionRef:
    return SubscriptionRef(
        subscription_id=_uuid(_metadata(sub).get(SUBSCRIPTION_ID_KEY)),
        provider_subscription_id=_str(sub["id"]),
    )


def _invoice_subscription(invoice: Mapping[str, Any]) -> SubscriptionRef | None:
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if not isinstance(details, dict):
        return None
    provider_sub = _id(details.get("subscription"))
    if provider_sub is None:
        return None
    return SubscriptionRef(
        subscription_id=_uuid(_metadata(details).get(SUBSCRIPTION_ID_KEY)),
        provider_subscription_id=provider_sub,
    )


def _invoice_payment_intent(invoice: Mapping[str, Any]) -> str | None:
    # Since 2025-03-31 an invoice lists its payments (when Stripe includes them) instead of
    # naming one payment_intent; refunds and disputes of the period find it by this id.
    payments = invoice.get("payments")
    rows = payments.get("data") if isinstance(payments, dict) else None
    for row in rows if isinstance(rows, list) else []:
        payment = row.get("payment") if isinstance(row, dict) else None
        if isinstance(payment, dict) and row.get("status") in ("paid", None):
            intent = _id(payment.get("payment_intent")) or _id(payment.get("charge"))
            if intent is not None:
                return intent
    return _id(invoice.get("payment_intent"))  # older API versions


def _period_line(invoice: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    """The period of the invoice's first non-proration subscription line: the period paid for.
    None when its first page has none (the invoice's own period is the one just ended, so it
    can not stand in)."""
    lines = invoice.get("lines")
    rows = lines.get("data") if isinstance(lines, dict) else None
    for row in rows if isinstance(rows, list) else []:
        period = row.get("period") if isinstance(row, dict) else None
        if isinstance(period, dict) and _is_subscription_line(row):
            return _time(period["start"]), _time(period["end"])
    return None


def _is_subscription_line(line: Mapping[str, Any]) -> bool:
    parent = line.get("parent")
    details = parent.get("subscription_item_details") if isinstance(parent, dict) else None
    return isinstance(details, dict) and not details.get("proration")


def _subscription_period(sub: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    items = sub.get("items")
    rows = items.get("data") if isinstance(items, dict) else None
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        item = rows[0]
        start, end = item.get("current_period_start"), item.get("current_period_end")
        if start is not None and end is not None:
            return _time(start), _time(end)
    return None, None


def _expanded(value: object, key: str) -> dict[str, Any] | None:
    if isinstance(value, dict):
        inner = value.get(key)
        if isinstance(inner, dict):
            return inner
    return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _id(value: object) -> str | None:
    """An id field that may also arrive expanded into its object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None  # someone else's reference (a Payment Link, another integration)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if type(value) is not int:  # bool is an int subclass; a JSON true is no amount
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _currency(value: object) -> str:
    return _str(value).upper()


def _time(value: object) -> datetime:
    return datetime.fromtimestamp(_int(value), tz=UTC)
