"""The Razorpay ``PaymentProvider``: Payment Links for top-ups, Subscriptions for plans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.integrations.base import (
    AmountRule,
    Checkout,
    CheckoutRequest,
    Credentials,
    Fact,
    MalformedWebhook,
    PaymentCanceled,
    PaymentExpired,
    PaymentLookup,
    PaymentRef,
    PaymentSucceeded,
    ProviderError,
    ProviderEvent,
    ProviderName,
    SubscriptionCheckoutRequest,
)
from app.integrations.razorpay import client, currencies, webhooks

# Razorpay refuses notes beyond 15 pairs or 256 characters; three pairs are ours.
MAX_NOTES = 15
MAX_NOTE_LENGTH = 256
OUR_NOTES = 3
MAX_CALLER_NOTES = MAX_NOTES - OUR_NOTES
MAX_DESCRIPTION_LENGTH = 2048

# Razorpay refuses a link's expire_by less than 15 minutes ahead; the margin covers the time
# the request takes to get there.
LINK_MIN_LIFETIME = timedelta(minutes=16)


def link_expiry(expires_at: datetime | None, *, now: datetime) -> int | None:
    """The link's ``expire_by`` (unix seconds): ``expires_at``, at least Razorpay's minimum
    ahead. A link never expires by itself otherwise."""
    if expires_at is None:
        return None
    return int(max(expires_at, now + LINK_MIN_LIFETIME).timestamp())


_DONE_SUBSCRIPTION_STATUSES = frozenset({"cancelled", "completed", "expired"})


class NotesTooLarge(ValueError):
    """Caller metadata does not fit Razorpay's notes (at most ``MAX_CALLER_NOTES`` pairs, keys
    and values at most ``MAX_NOTE_LENGTH`` characters); the caller answers 422."""


def checkout_notes(req: CheckoutRequest) -> dict[str, str]:
    """The caller's metadata plus our ids. Too much metadata is refused, not cut: silently
    dropping what a client asked to store would surprise it later."""
    caller = {k: v for k, v in req.metadata.items() if not k.startswith("creditd_")}
    if len(caller) > MAX_CALLER_NOTES:
        raise NotesTooLarge(f"razorpay allows at most {MAX_CALLER_NOTES} metadata entries")
    for key, value in caller.items():
        if len(key) > MAX_NOTE_LENGTH or len(value) > MAX_NOTE_LENGTH:
            raise NotesTooLarge(
                f"razorpay allows metadata keys and values of at most {MAX_NOTE_LENGTH} characters"
            )
    # Ours go last so that caller metadata can never point a payment at another one.
    return {
        **caller,
        webhooks.NOTE_PAYMENT_ID: str(req.payment_id),
        webhooks.NOTE_PROJECT_ID: str(req.project_id),
        webhooks.NOTE_USER_ID: req.user_id[:MAX_NOTE_LENGTH],
    }


def _find_link(api: Any, reference_id: str) -> dict[str, Any] | None:
    listing = api.payment_link.all({"reference_id": reference_id})
    links = listing.get("payment_links") if isinstance(listing, dict) else None
    for link in links or []:
        if isinstance(link, dict) and link.get("reference_id") == reference_id:
            return link
    return None


def _checkout_from_link(link: Mapping[str, Any]) -> Checkout:
    url, link_id = link.get("short_url"), link.get("id")
    if not isinstance(url, str) or not isinstance(link_id, str):
        raise ProviderError(
            "razorpay returned a payment link without id or short_url", transient=False
        )
    order_id = link.get("order_id")
    return Checkout(
        url=url,
        reference=link_id,
        order_id=order_id if isinstance(order_id, str) and order_id else None,
    )


class RazorpayProvider:
    """Stateless: credentials come with every call, so one instance serves every project."""

    name: ProviderName = "razorpay"

    def minor_units(self, currency: str) -> int | None:
        return currencies.minor_units(currency)

    def amount_rule(self, currency: str) -> AmountRule | None:
        return currencies.amount_rule(currency)

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        """A Payment Link whose ``reference_id`` is our payment id.

        Razorpay has no idempotency key for links but refuses a second link with the same
        ``reference_id``; a retried create (after a timeout that did create it) therefore finds
        and returns the link made the first time.
        """
        reference_id = str(req.payment_id)
        data: dict[str, Any] = {
            "amount": req.amount_minor,
            "currency": req.currency,
            "accept_partial": False,
            "reference_id": reference_id,
            "description": req.description[:MAX_DESCRIPTION_LENGTH],
            "notes": checkout_notes(req),
            # The product sends the user to the link itself; Razorpay's SMS/e-mail need a
            # customer contact creditd does not have.
            "notify": {"sms": False, "email": False},
            "reminder_enable": False,
        }
        if req.success_url:
            data["callback_url"] = req.success_url
            data["callback_method"] = "get"
        # Not payable after reconciliation gives up on it: money taken later would be credited
        # only if its webhook arrived.
        expire_by = link_expiry(req.expires_at, now=datetime.now(UTC))
        if expire_by is not None:
            data["expire_by"] = expire_by
        try:
            link = await client.call(creds, lambda api: api.payment_link.create(data))
        except ProviderError as refused:
            if refused.transient:
                raise
            existing = await client.call(creds, lambda api: _find_link(api, reference_id))
            if existing is None:
                raise
            if existing.get("amount") != req.amount_minor or (
                str(existing.get("currency", "")).upper() != req.currency.upper()
            ):
                raise ProviderError(
                    "a razorpay payment link with this reference_id exists for another amount",
                    transient=False,
                    status=refused.status,
                ) from refused
            link = existing
        return _checkout_from_link(link)

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        """A Razorpay subscription on the plan; its ``short_url`` is where the user authorises it.
        (Razorpay has no idempotency for subscriptions: a retry after a timeout may leave an
        unused ``created`` subscription behind, which never charges.)"""
        data = {
            "plan_id": req.provider_plan,
            "total_count": req.total_count,
            "customer_notify": 1,
            "notes": {
                webhooks.NOTE_SUBSCRIPTION_ID: str(req.subscription_id),
                webhooks.NOTE_PROJECT_ID: str(req.project_id),
                webhooks.NOTE_USER_ID: req.user_id[:MAX_NOTE_LENGTH],
            },
        }
        subscription = await client.call(creds, lambda api: api.subscription.create(data))
        url, sub_id = subscription.get("short_url"), subscription.get("id")
        if not isinstance(url, str) or not isinstance(sub_id, str):
            raise ProviderError(
                "razorpay returned a subscription without id or short_url", transient=False
            )
        customer = subscription.get("customer_id")
        return Checkout(
            url=url,
            reference=sub_id,
            subscription_id=sub_id,
            customer_id=customer if isinstance(customer, str) and customer else None,
        )

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None:
        """Cancel now or at the cycle end; cancelling one that already ended is a no-op (so a
        retried cancel succeeds)."""
        body = {"cancel_at_cycle_end": 1 if at_period_end else 0}
        try:
            await client.call(
                creds, lambda api: api.subscription.cancel(provider_subscription_id, body)
            )
        except ProviderError as refused:
            if refused.transient:
                raise
            current = await client.call(
                creds, lambda api: api.subscription.fetch(provider_subscription_id)
            )
            if current.get("status") not in _DONE_SUBSCRIPTION_STATUSES:
                raise

    def verify_webhook(
        self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
    ) -> None:
        """HMAC-SHA256 of the raw body; ``now`` is unused (Razorpay signs no timestamp)."""
        webhooks.verify(body, headers, secrets)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        return webhooks.parse(body, headers)

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        """Fetch the link: ``paid`` → succeeded (its captured payment), ``expired`` /
        ``cancelled`` → so; anything else (``created``, ``partially_paid``) → nothing yet."""
        link = await client.call(creds, lambda api: api.payment_link.fetch(payment.reference))
        try:
            return _lookup_facts(link, payment)
        except MalformedWebhook as exc:
            raise ProviderError(
                f"razorpay returned an odd payment link: {exc}", transient=False
            ) from exc


def _lookup_facts(link: dict[str, Any], payment: PaymentLookup) -> list[Fact]:
    status = link.get("status")
    order_id = webhooks.text(link, "order_id")
    if status in ("expired", "cancelled"):
        ref = PaymentRef(
            payment_id=payment.payment_id, reference=payment.reference, order_id=order_id
        )
        return [PaymentExpired(ref=ref) if status == "expired" else PaymentCanceled(ref=ref)]
    if status != "paid":
        return []
    captured = [
        entry
        for entry in link.get("payments") or []
        if isinstance(entry, dict) and entry.get("status") == "captured"
    ]
    # Links are created without accept_partial: one captured payment pays them.
    paid = captured[-1] if captured else None
    if paid is None:
        provider_payment_id, amount = None, webhooks.minor(link, "amount_paid")
    else:
        provider_payment_id = webhooks.text(paid, "payment_id") or webhooks.text(paid, "id")
        amount = webhooks.minor(paid, "amount")
        order_id = order_id or webhooks.text(paid, "order_id")
    return [
        PaymentSucceeded(
            ref=PaymentRef(
                payment_id=payment.payment_id,
                reference=payment.reference,
                provider_payment_id=provider_payment_id,
                order_id=order_id,
            ),
            amount_minor=amount,
            currency=webhooks.currency(link),
            provider_payment_id=provider_payment_id,
        )
    ]
