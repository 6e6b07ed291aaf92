"""The one seam between creditd and a payment provider (CONVENTIONS.md, habit 14).

A provider adapter (``app/integrations/stripe``, ``app/integrations/razorpay``) wraps the
provider's official SDK and does four things: create checkouts, cancel subscriptions, verify a
webhook over its exact raw bytes, and translate a webhook (or a reconciliation lookup) into
provider-neutral **facts**. The payments and plans services only ever see facts; they never
import an SDK.

Facts are *statements about money at the provider*, not commands: each says what the provider
reports now (a payment succeeded for this amount; this much of it is refunded in total; the
dispute is lost). Applying a fact is idempotent and order-independent: cumulative amounts are
merged with max(), and the payment state machine only moves forward.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from iso4217 import Currency

ProviderName = Literal["stripe", "razorpay"]
PROVIDERS: tuple[ProviderName, ...] = ("stripe", "razorpay")


# --- credentials and requests ------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A project's API credentials for one provider (decrypted; never logged)."""

    provider: ProviderName
    secret_key: str  # Stripe sk_…, Razorpay key_secret
    key_id: str | None = None  # Razorpay rzp_… (None for Stripe)
    api_base: str = ""  # from settings: the real API, or a fake in tests
    timeout_seconds: float = 20.0  # settings.payments.provider_timeout_seconds, per HTTP call


@dataclass(frozen=True)
class CheckoutRequest:
    """A one-off top-up: ``amount_minor`` of ``currency`` for ``credits`` credits."""

    payment_id: uuid.UUID  # ours: sent as metadata / reference so webhooks find the payment
    project_id: uuid.UUID
    user_id: str
    amount_minor: int
    currency: str  # ISO 4217, upper case
    credits: Decimal
    description: str
    success_url: str | None
    cancel_url: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None  # sent to the provider: a retry never makes two
    # When reconciliation gives up on the payment: the checkout should not be payable after
    # it (adapters pass it on where the provider's limits allow).
    expires_at: datetime | None = None


@dataclass(frozen=True)
class SubscriptionCheckoutRequest:
    subscription_id: uuid.UUID  # ours
    project_id: uuid.UUID
    user_id: str
    plan_id: str
    provider_plan: str  # Stripe price id / Razorpay plan id
    success_url: str | None
    cancel_url: str | None
    total_count: int = 120  # Razorpay needs a bound on billing cycles
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Checkout:
    """What the user is sent to: ``url``; ``reference`` is the provider's id for it."""

    url: str
    reference: str  # cs_… / plink_… / sub_…
    order_id: str | None = None  # Razorpay: the order behind a payment link, when known
    subscription_id: str | None = None  # provider subscription id, when known at creation
    customer_id: str | None = None


# --- facts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentRef:
    """Everything a webhook tells about which payment it is; any one may identify it.

    Looked up in this order: our ``payment_id`` (metadata / client_reference_id / reference_id),
    ``reference`` (checkout session / payment link id), ``provider_payment_id``, ``order_id``.
    """

    payment_id: uuid.UUID | None = None
    reference: str | None = None
    provider_payment_id: str | None = None
    order_id: str | None = None


@dataclass(frozen=True)
class PaymentSucceeded:
    """The money arrived: credit the payment (once) if amount and currency match the record."""

    ref: PaymentRef
    amount_minor: int
    currency: str
    provider_payment_id: str | None


@dataclass(frozen=True)
class PaymentPending:
    """Paid by an asynchronous method that has not cleared yet (Stripe async payments)."""

    ref: PaymentRef


@dataclass(frozen=True)
class PaymentFailed:
    ref: PaymentRef
    reason: str | None = None
    # True when only this attempt failed and the checkout can still be paid (a Razorpay
    # Payment Link takes another try): the payment stays open, so reconciliation still finds
    # the money of a later attempt whose webhooks are lost.
    checkout_open: bool = False


@dataclass(frozen=True)
class PaymentExpired:
    ref: PaymentRef


@dataclass(frozen=True)
class PaymentCanceled:
    ref: PaymentRef


@dataclass(frozen=True)
class PaymentRefunded:
    """``amount_refunded_minor`` is the cumulative total refunded so far (merged with max)."""

    ref: PaymentRef
    amount_refunded_minor: int
    currency: str


@dataclass(frozen=True)
class PaymentIdentified:
    """The provider's payment id of the payment ``ref`` names (Stripe's ``invoice_payment.paid``:
    since API 2025-03-31 an invoice no longer names its PaymentIntent, and refunds and disputes
    of a subscription charge carry only that intent)."""

    ref: PaymentRef
    provider_payment_id: str


DisputeState = Literal["inquiry", "open", "withdrawn", "reinstated", "won", "lost"]


@dataclass(frozen=True)
class DisputeChanged:
    """A dispute (chargeback) on the payment. Money moves on ``withdrawn``/``lost`` (credits
    clawed back) and back on ``reinstated``/``won`` (credits restored); an ``inquiry`` and a
    plain ``open`` move none."""

    ref: PaymentRef
    state: DisputeState
    amount_minor: int
    currency: str
    dispute_id: str | None = None


@dataclass(frozen=True)
class SubscriptionRef:
    subscription_id: uuid.UUID | None = None  # ours, from metadata / notes
    provider_subscription_id: str | None = None
    reference: str | None = None  # the checkout session that created it (Stripe)


@dataclass(frozen=True)
class SubscriptionLinked:
    """The checkout completed: the provider subscription (and customer) now exist."""

    ref: SubscriptionRef
    provider_subscription_id: str
    provider_customer_id: str | None = None


@dataclass(frozen=True)
class SubscriptionPeriodPaid:
    """One renewal (or the first period) was paid: one period grant per ``charge_id``."""

    ref: SubscriptionRef
    charge_id: str  # Stripe invoice in_… / Razorpay payment pay_…: unique per period payment
    provider_payment_id: str | None  # pi_… / pay_… (refunds and disputes find it by this)
    amount_minor: int
    currency: str
    period_start: datetime
    period_end: datetime
    # False: money charged on the subscription that pays for no period (a one-off invoice,
    # a proration): recorded as a payment, granted nothing, reported to the operator.
    buys_period: bool = True


SubscriptionStatus = Literal["active", "past_due", "halted", "canceled", "ended"]


@dataclass(frozen=True)
class SubscriptionStatusChanged:
    """``past_due``: a renewal failed, the provider retries. ``halted``/``ended``: the provider
    gave up or the subscription is over (the user goes back to the tier it had). ``canceled``
    with ``cancel_at_period_end`` is a scheduled end."""

    ref: SubscriptionRef
    status: SubscriptionStatus
    cancel_at_period_end: bool | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


PaymentFact = (
    PaymentSucceeded
    | PaymentPending
    | PaymentFailed
    | PaymentExpired
    | PaymentCanceled
    | PaymentRefunded
    | DisputeChanged
    | PaymentIdentified
)
SubscriptionFact = SubscriptionLinked | SubscriptionPeriodPaid | SubscriptionStatusChanged
Fact = PaymentFact | SubscriptionFact


@dataclass(frozen=True)
class ProviderEvent:
    """A verified, parsed webhook: stored once by ``event_id``; ``facts`` may be empty (an
    event type creditd does not act on is stored and ignored)."""

    event_id: str
    type: str
    facts: Sequence[Fact]
    payload: Mapping[str, Any]  # the parsed JSON body, stored with the event


@dataclass(frozen=True)
class PaymentLookup:
    """What reconciliation knows of a payment still created/pending."""

    payment_id: uuid.UUID
    reference: str  # cs_… / plink_…
    amount_minor: int
    currency: str


# --- currencies --------------------------------------------------------------------------------


def iso_exponent(currency: str) -> int | None:
    """ISO 4217 minor units of ``currency`` (upper case) from the official SIX table; None for a
    code the table does not list or lists without minor units (gold, SDRs, test codes)."""
    try:
        return Currency(currency).exponent
    except ValueError:
        return None


@dataclass(frozen=True)
class AmountRule:
    """A provider takes amounts of a currency only in multiples of ``step`` minor units (its
    minor units, ``PaymentProvider.minor_units``); ``rule`` says so for the caller's 422."""

    step: int
    rule: str


# --- errors ------------------------------------------------------------------------------------


class InvalidSignature(Exception):
    """The webhook's signature did not verify (or no secret could verify it)."""


class MalformedWebhook(Exception):
    """The body verified but is not an event this provider sends (not JSON, no id)."""


class ProviderError(Exception):
    """The provider refused or failed a call: ``transient`` ones (network, 5xx, 429) may be
    retried; others (bad credentials, invalid request) need the caller to act."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


# --- the protocol ------------------------------------------------------------------------------


class PaymentProvider(Protocol):
    name: ProviderName

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        """Stripe: Checkout Session, mode ``payment``. Razorpay: Payment Link."""
        ...

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        """Stripe: Checkout Session, mode ``subscription``. Razorpay: a subscription."""
        ...

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None: ...

    def verify_webhook(
        self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
    ) -> None:
        """Raise ``InvalidSignature`` unless one of ``secrets`` signed exactly ``body``
        (``headers`` keys are lower case). No secrets → always raises."""
        ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        """Translate a verified webhook into facts; ``MalformedWebhook`` if it is not one."""
        ...

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        """Reconciliation: what the provider says about the payment now (Stripe: retrieve the
        session; Razorpay: fetch the link and its payments)."""
        ...

    def minor_units(self, currency: str) -> int | None:
        """Decimal places of ``currency`` (upper case) in this provider's amounts: the ISO 4217
        exponent unless the provider documents otherwise; None when it does not take it."""
        ...

    def amount_rule(self, currency: str) -> AmountRule | None:
        """A documented restriction on amounts beyond whole minor units, or None."""
        ...
