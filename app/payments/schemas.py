"""Payments I/O: a top-up request, the payment as returned, list filters, webhook receipts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.money import Money, PositiveAmount
from app.integrations.base import ProviderName
from app.users.schemas import UserId

PaymentStatus = Literal[
    "created",
    "pending",
    "succeeded",
    "failed",
    "expired",
    "canceled",
    "partially_refunded",
    "refunded",
    "disputed",
    "won",
    "lost",
]
CurrencyCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z]{3}$",
        description="ISO 4217 code, any case (returned upper case)",
        examples=["USD"],
    ),
]
Url = Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)]
# Both providers carry these to the checkout and back in their webhooks; the bounds fit the
# tighter of the two (Razorpay notes: 15 pairs of 256 characters) with room for creditd's own.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MetadataValue = Annotated[str, StringConstraints(max_length=250)]


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    provider: ProviderName
    amount: PositiveAmount = Field(
        description="What the user pays, in major units (10.50 USD); must be a whole number "
        "of the currency's minor units"
    )
    currency: CurrencyCode
    credits: PositiveAmount | None = Field(
        default=None,
        description="Credits granted once the money arrives; optional when the project's "
        "credits_per_unit has a rate for the currency (credits = amount x rate, rounded "
        "half-up to 6 places)",
    )
    success_url: Url | None = None
    cancel_url: Url | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=10,
        description="Strings only, passed to the provider and kept on the payment",
    )


class PaymentOut(BaseModel):
    id: uuid.UUID
    user_id: str
    kind: Literal["top_up", "subscription"]
    provider: ProviderName
    status: PaymentStatus
    amount: Money
    currency: str
    amount_minor: int
    credits: Money
    checkout_url: str | None
    provider_reference: str | None = Field(
        description="The provider's checkout: Stripe Checkout Session cs_..., Razorpay "
        "Payment Link plink_..., or the invoice/charge of a subscription period"
    )
    provider_payment_id: str | None = Field(description="Stripe pi_... / Razorpay pay_...")
    subscription_id: uuid.UUID | None
    credits_granted: Money
    credits_clawed_back: Money
    amount_refunded: Money
    dispute_status: Literal["inquiry", "open", "withdrawn", "reinstated", "won", "lost"] | None
    failure_reason: str | None
    metadata: dict[str, str]
    succeeded_at: datetime | None
    created_at: datetime
    updated_at: datetime


class PaymentFilters(BaseModel):
    user_id: str | None = Field(default=None, max_length=255)
    status: PaymentStatus | None = None
    provider: ProviderName | None = None


class WebhookReceived(BaseModel):
    received: bool = True
    duplicate: bool = Field(description="This event id was received before; nothing changed")
    outcome: str | None = Field(
        default=None,
        description="What the event did: applied, ignored, unmatched, stale, amount_mismatch, "
        "conflict, not_granted (null for a duplicate)",
    )
