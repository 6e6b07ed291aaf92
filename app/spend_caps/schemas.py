from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from app.core.money import Money, PositiveAmount

# Named (a schema component) so generated clients share one type.
SpendCapPeriod = TypeAliasType("SpendCapPeriod", Literal["day", "month"])


class SpendCapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: PositiveAmount
    action: Literal["deny", "warn"] = Field(
        description="deny: starts that would exceed it get continue=false, reason "
        "spend_cap_reached; warn: they are allowed and a spend_cap.exceeded event is written"
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=200, description="Only this model; none = all"
    )


class SpendCapOut(BaseModel):
    period: SpendCapPeriod
    model: str | None
    limit: Money
    action: str
    created_at: datetime
    updated_at: datetime


class SpendCapList(BaseModel):
    data: list[SpendCapOut]
