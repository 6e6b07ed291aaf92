from __future__ import annotations

import decimal
import uuid
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from app.core.money import Money, PositiveAmount, UtcDatetime

GrantSource = Literal["adjustment", "purchase", "promo", "bonus"]
GrantCategory = Literal["paid", "promotional"]

COST_BASIS_PLACES = 12
_COST_BASIS_QUANTUM = Decimal(1).scaleb(-COST_BASIS_PLACES)
CostBasis = Annotated[
    Decimal,
    WithJsonSchema(
        {
            "type": "number",
            "format": "decimal",
            "description": "Money paid per credit, in cost_currency (cost_amount / amount, "
            f"rounded half-up to {COST_BASIS_PLACES} decimal places); null when unknown",
        }
    ),
]


def cost_basis(cost_amount: Decimal | None, amount: Decimal) -> Decimal | None:
    """Money per credit, for display: liability values use the exact ratio, not this."""
    if cost_amount is None or not amount:
        return None
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Inexact] = False  # 10 for 3 credits: the rounding is intended
        return (cost_amount / amount).quantize(_COST_BASIS_QUANTUM, rounding=ROUND_HALF_UP)


class CreditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: PositiveAmount
    reason: str | None = Field(default=None, max_length=500)
    expires_at: UtcDatetime | None = Field(default=None, description="Must be in the future")
    source: GrantSource = "adjustment"
    category: GrantCategory = Field(
        default="promotional",
        description="`paid` credits burn after promotional ones (among grants expiring at the "
        "same time); credits granted here have no payment and no cost basis",
    )


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
    category: GrantCategory = Field(
        description="`paid` (purchases, subscription periods) or `promotional` (everything "
        "given away). Charges burn grants soonest expiry first (no expiry last), then "
        "promotional before paid, then oldest first"
    )
    payment_id: uuid.UUID | None = Field(description="The payment that bought this grant")
    cost_basis: CostBasis | None
    cost_currency: str | None = Field(description="ISO 4217 currency of cost_basis")

    @model_validator(mode="before")
    @classmethod
    def _from_grant_row(cls, data: Any) -> Any:
        if isinstance(data, dict) or not hasattr(data, "cost_amount"):
            return data
        names = [name for name in GrantOut.model_fields if name != "cost_basis"]
        fields = {name: getattr(data, name) for name in names}
        return {**fields, "cost_basis": cost_basis(data.cost_amount, data.amount)}


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
    user_id: str | None = Field(
        default=None,
        description="The user whose account changed; on a team's ledger the member whose "
        "usage it was (null: a team-level change such as a grant, debit or expiry)",
    )
    amount: Money = Field(description="Change of the user's total")
    held_amount: Money = Field(description="Change of the user's held credits")
    balance_after: Money = Field(description="The user's available balance after this entry")
    total_after: Money
    held_after: Money
    transaction_id: uuid.UUID | None
    grant_id: uuid.UUID | None
    reason: str | None
    created_at: datetime
