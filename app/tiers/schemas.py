from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.freeform import FREEFORM_DOC, FREEFORM_RULE
from app.core.money import Money, NonNegativeAmount, PositiveAmount
from app.pricing.schemas import PricingExpression, one_price_form

TierId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", examples=["free", "pro"])]
Interval = Literal["none", "day", "week", "month", "year"]
Mode = Literal["reset", "rollover"]
# Free-form, at most 100 keys, within the free-form JSON limits (app.core.freeform).
Features = Annotated[dict[str, Any], Field(max_length=100), FREEFORM_RULE, FREEFORM_DOC]


class ModelOverride(BaseModel):
    """Per-model pricing for a tier: prices replace the project's, the multiplier the tier's.

    An ``expression`` replaces the model's price (the multiplier applies to its result);
    per-1K prices replace those of a per-1K price, and replace an expression price only when
    both input and output prices are given. An expression and per-1K prices together → 422."""

    model_config = ConfigDict(extra="forbid")

    input_price_per_1k: NonNegativeAmount | None = None
    output_price_per_1k: NonNegativeAmount | None = None
    cached_input_price_per_1k: NonNegativeAmount | None = None
    request_price: NonNegativeAmount | None = None
    price_multiplier: NonNegativeAmount | None = None
    expression: PricingExpression | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ModelOverride:
        one_price_form(self.__dict__, partial=True)
        return self


class _TierFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    credits: NonNegativeAmount | None = Field(
        default=None, description="Allocation granted at assignment and at every refill"
    )
    refill_interval: Interval | None = None
    refill_mode: Mode | None = Field(
        default=None,
        description="reset: a refill replaces the unused allocation; rollover: it carries "
        "over, the tier allocation capped at rollover_cap. Purchased and promo credits are "
        "never touched.",
    )
    rollover_cap: PositiveAmount | None = None
    allow_overage: bool | None = None
    overage_limit: NonNegativeAmount | None = Field(
        default=None,
        description="With allow_overage: how far below 0 available may go; none = no limit",
    )
    price_multiplier: NonNegativeAmount | None = None
    model_overrides: dict[str, ModelOverride] | None = Field(default=None, max_length=100)
    max_concurrent_transactions: int | None = Field(default=None, ge=1, le=100_000)
    features: Features | None = None
    is_default: bool | None = Field(default=None, description="Assigned to new users")


class TierCreate(_TierFields):
    id: TierId
    name: str = Field(min_length=1, max_length=200)


class TierPatch(_TierFields):
    pass


class TierOut(BaseModel):
    id: str
    name: str
    credits: Money
    refill_interval: Interval
    refill_mode: Mode
    rollover_cap: Money | None
    allow_overage: bool
    overage_limit: Money | None
    price_multiplier: Money
    model_overrides: dict[str, Any]
    max_concurrent_transactions: int | None
    features: dict[str, Any]
    is_default: bool
    created_at: datetime
    updated_at: datetime


class AssignTier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier_id: TierId
    reset_balance: bool = Field(
        default=False,
        description="Also remove what is left of the user's previous tier allocations "
        "(purchased, promo and other credits are kept)",
    )


ZERO_DEC = Decimal(0)
