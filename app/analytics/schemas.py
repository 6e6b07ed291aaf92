from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.core.money import Money

GroupBy = Literal["user", "model", "feature", "day", "team", "member"]
TEAM_GROUPS = ("team", "member")


class SpendRow(BaseModel):
    key: str | None = Field(
        description="The user id, model, feature (null: usage without a feature), UTC day "
        "(YYYY-MM-DD), team id or member's user id of this group"
    )
    credits: Money = Field(description="Credits charged, net of refunds")
    transactions: int = Field(description="Successful charges")


class SpendOut(BaseModel):
    group_by: GroupBy
    start: datetime = Field(description="Effective start: the requested start's UTC midnight")
    end: datetime = Field(description="Effective end (exclusive): a UTC midnight")
    data: list[SpendRow]


class SummaryOut(BaseModel):
    start: datetime = Field(description="Effective start: the requested start's UTC midnight")
    end: datetime = Field(description="Effective end (exclusive): a UTC midnight")
    credits_consumed: Money = Field(description="Credits charged, net of refunds")
    active_users: int = Field(description="Users with at least one successful charge")
    transactions: int = Field(description="Successful charges")
    top_model: str | None = Field(description="The model with the most credits; null: no usage")
    top_user: str | None = Field(description="The user with the most credits; null: no usage")


class PaidLiability(BaseModel):
    currency: str = Field(description="ISO 4217 code the credits were paid in")
    credits: Money = Field(description="Paid credits outstanding (unspent, unexpired)")
    value: Money = Field(
        description="Their money value (deferred revenue): the sum of remaining * cost_amount"
        " / amount, rounded half-up to the currency's minor units"
    )


class LiabilityOut(BaseModel):
    paid: list[PaidLiability] = Field(description="Per currency, ordered by currency code")
    paid_unpriced_credits: Money = Field(
        description="Paid credits outstanding whose price is unknown (granted by hand as paid)"
    )
    promotional_credits: Money = Field(description="Promotional credits outstanding")
    debt: Money = Field(description="Credits users owe (spent beyond their grants, clawed back)")
    as_of: datetime = Field(description="The moment the figures describe")
