"""A stand-in PaymentProvider for the payments service's own tests: the real adapters and
their fake servers are tested with the integrations; here only creditd's side of the seam
matters. Its webhooks are HMAC-SHA256 (hex) over the raw body, like Razorpay's."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.integrations.base import (
    Checkout,
    CheckoutRequest,
    Credentials,
    Fact,
    InvalidSignature,
    MalformedWebhook,
    PaymentLookup,
    PaymentRef,
    PaymentSucceeded,
    ProviderError,
    ProviderEvent,
    ProviderName,
    SubscriptionCheckoutRequest,
)

HEADER = "x-fake-signature"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def succeeded_event(event_id: str, payment_id: str, amount_minor: int = 1000) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "type": "payment.captured",
            "payment_id": payment_id,
            "amount_minor": amount_minor,
            "currency": "USD",
            "pay": "pay_" + event_id,
        }
    ).encode()


@dataclass
class FakeProvider:
    name: ProviderName = "stripe"
    checkouts: list[CheckoutRequest] = field(default_factory=list)
    fail: ProviderError | None = None
    lookups: dict[str, list[Fact]] = field(default_factory=dict)
    looked_up: list[PaymentLookup] = field(default_factory=list)

    async def create_checkout(self, creds: Credentials, req: CheckoutRequest) -> Checkout:
        if self.fail is not None:
            raise self.fail
        self.checkouts.append(req)
        ref = f"cs_{req.payment_id.hex}"
        return Checkout(url=f"https://checkout.example/{ref}", reference=ref)

    async def create_subscription_checkout(
        self, creds: Credentials, req: SubscriptionCheckoutRequest
    ) -> Checkout:
        raise NotImplementedError

    async def cancel_subscription(
        self, creds: Credentials, provider_subscription_id: str, *, at_period_end: bool
    ) -> None:
        raise NotImplementedError

    def verify_webhook(
        self, body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, now: datetime
    ) -> None:
        given = headers.get(HEADER, "")
        if not any(hmac.compare_digest(sign(body, s), given) for s in secrets):
            raise InvalidSignature("no secret signed this body")

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        try:
            data: dict[str, Any] = json.loads(body)
            event_id = data["id"]
        except (ValueError, KeyError) as exc:
            raise MalformedWebhook(str(exc)) from None
        facts: list[Fact] = []
        if data.get("type") == "payment.captured":
            facts.append(
                PaymentSucceeded(
                    ref=PaymentRef(reference=data["payment_id"]),
                    amount_minor=data["amount_minor"],
                    currency=data["currency"],
                    provider_payment_id=data["pay"],
                )
            )
        return ProviderEvent(
            event_id=event_id, type=data.get("type", ""), facts=facts, payload=data
        )

    async def lookup_payment(self, creds: Credentials, payment: PaymentLookup) -> list[Fact]:
        self.looked_up.append(payment)
        return list(self.lookups.get(payment.reference, []))
