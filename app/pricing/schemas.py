from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.core.money import Money, NonNegativeAmount

MAX_TOKENS = 10**12
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]


class TokenUsage(BaseModel):
    """Token counts. ``input_tokens`` excludes cached input, which is priced separately."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0


class ModelPriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_price_per_1k: NonNegativeAmount
    output_price_per_1k: NonNegativeAmount
    cached_input_price_per_1k: NonNegativeAmount | None = Field(
        default=None, description="Defaults to the input price"
    )
    request_price: NonNegativeAmount | None = Field(default=None, description="Per request; 0")


class ModelPriceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    input_price_per_1k: Money
    output_price_per_1k: Money
    cached_input_price_per_1k: Money | None
    request_price: Money
    created_at: datetime
    updated_at: datetime
