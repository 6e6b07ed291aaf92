"""``PaymentProvider`` for Stripe: API calls from ``client``, webhooks from ``webhooks``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from app.integrations.base import (
    AmountRule,
    Checkout,
    CheckoutRequest,
    Credentials,
    Fact,
    PaymentLookup,
    ProviderEvent,
    ProviderName,
    SubscriptionCheckoutRequest,
)
from app.integrations.stripe import currencies, webhooks
from app.integrations.stripe.client import StripeApi


class StripeProvider:
    name: ProviderName = "stripe"

    def __init__(self, *, max_network_retries: int = 2) -> None:
        self.api = StripeApi(max_network_retries=max_network_retries)

    def minor_units(self, currency: str) -> int | None:
        return currencies.minor_units(currency)

    def amount_rule(self, currency: str) -> AmountRule | None:
        return currencies.amount_rule(currency)

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        """Checkout Session, mode ``payment``; ``ValueError`` without a ``success_url``."""
        return await self.api.create_checkout(creds, req)

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        """Checkout Session, mode ``subscription``; ``ValueError`` without a ``success_url``."""
        return await self.api.create_subscription_checkout(creds, req)

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None:
        await self.api.cancel_subscription(
            creds, provider_subscription_id, at_period_end=at_period_end
        )

    def verify_webhook(
        self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
    ) -> None:
        webhooks.verify(body, headers, secrets, now=now)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        return webhooks.parse(body)

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        return await self.api.lookup_payment(creds, payment)
