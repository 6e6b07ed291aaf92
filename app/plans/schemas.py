"""Plan and subscription I/O."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from app.core.money import Money, NonNegativeAmount
from app.tiers.schemas import TierId

PlanId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", examples=["pro_monthly"])]
# Named (schema components) so generated clients share one type for each.
PlanInterval = TypeAliasType("PlanInterval", Literal["day", "month", "year"])
SubscriptionProvider = TypeAliasType(
    "SubscriptionProvider", Literal["stripe", "razorpay", "manual"]
)
ProviderRef = Annotated[str, Field(min_length=1, max_length=255)]
RedirectUrl = Annotated[
    str, Field(max_length=2048, pattern=r"^https?://[^\s]+$", examples=["https://example.com/ok"])
]

_ACTIVE = "Only active plans can be subscribed to; existing subscriptions keep renewing"
_TIER = "Subscribers are moved to this tier while their subscription lasts"
_CREDITS = "Granted at the start of every period (the first one at subscription)"


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: NonNegativeAmount = Field(description="Price per interval, in major units")
    currency: str = Field(
        pattern=r"^[A-Z]{3}$", description="ISO 4217 code, upper-case", examples=["USD"]
    )


class PriceOut(BaseModel):
    amount: Money
    currency: str


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: PlanId
    name: str = Field(min_length=1, max_length=200)
    price: Price
    interval: PlanInterval = Field(description="Length of a period (fixed once the plan exists)")
    credits_per_period: NonNegativeAmount = Field(description=_CREDITS)
    tier_id: TierId | None = Field(default=None, description=_TIER)
    stripe_price_id: ProviderRef | None = None
    razorpay_plan_id: ProviderRef | None = None
    active: bool = Field(default=True, description=_ACTIVE)


class PlanPatch(BaseModel):
    """Changes apply to new subscriptions and to existing ones from their next renewal.

    ``interval`` cannot change (existing periods are anchored on it): create a new plan.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    price: Price | None = None
    credits_per_period: NonNegativeAmount | None = Field(default=None, description=_CREDITS)
    tier_id: TierId | None = Field(default=None, description=f"{_TIER}; null removes it")
    stripe_price_id: ProviderRef | None = None
    razorpay_plan_id: ProviderRef | None = None
    active: bool | None = Field(default=None, description=_ACTIVE)


class PlanOut(BaseModel):
    id: str
    name: str
    price: PriceOut
    interval: PlanInterval
    credits_per_period: Money
    tier_id: str | None
    stripe_price_id: str | None
    razorpay_plan_id: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: PlanId
    provider: SubscriptionProvider = Field(
        description="`manual`: creditd renews it on schedule. `stripe`/`razorpay`: the user "
        "pays at `checkout_url`; the provider renews it and its webhooks grant each period"
    )
    success_url: RedirectUrl | None = Field(
        default=None, description="Stripe: where Checkout sends the user after paying"
    )
    cancel_url: RedirectUrl | None = Field(
        default=None, description="Stripe: where Checkout sends the user who gives up"
    )


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_period_end: bool = Field(
        default=True,
        description="true: keep the subscription until its current period ends, then end it; "
        "false: end it now",
    )


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    user_id: str
    plan_id: str
    provider: SubscriptionProvider
    status: str = Field(
        description="`incomplete` (provider subscriptions until the first period is paid), "
        "`active`, `past_due` (a provider renewal failed; the provider retries) or `canceled` "
        "(ended: `ended_at` is set)"
    )
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None = Field(description="When the cancellation was requested")
    ended_at: datetime | None = Field(description="When the subscription ended")
    provider_subscription_id: str | None
    created_at: datetime


class SubscriptionCreated(BaseModel):
    subscription: SubscriptionOut
    checkout_url: str | None = Field(
        description="Where the user pays (provider subscriptions); null for `manual`"
    )
