from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.core.money import Money, NonNegativeAmount

JobName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$", examples=["batch_job", "report.daily"])
]


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price: NonNegativeAmount = Field(description="Credits per run (times quantity)")


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    price: Money
    created_at: datetime
    updated_at: datetime
