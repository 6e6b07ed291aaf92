from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.money import Money, PositiveAmount, UtcDatetime

GrantSource = Literal["adjustment", "purchase", "promo", "bonus"]


class CreditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    reason: str | None = Field(default=None, max_length=500)
    expires_at: UtcDatetime | None = Field(default=None, description="Must be in the future")
    source: GrantSource = "adjustment"


class DebitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    reason: str | None = Field(default=None, max_length=500)


class GrantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    amount: Money
    remaining: Money
    source: str
    reason: str | None
    expires_at: datetime | None
    created_at: datetime


class GrantCreated(GrantOut):
    balance: Money


class DebitOut(BaseModel):
    ledger_entry_id: int
    amount: Money
    balance: Money


class LedgerEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    amount: Money = Field(description="Change of the user's total")
    held_amount: Money = Field(description="Change of the user's held credits")
    balance_after: Money = Field(description="The user's available balance after this entry")
    total_after: Money
    held_after: Money
    transaction_id: uuid.UUID | None
    grant_id: uuid.UUID | None
    reason: str | None
    created_at: datetime
