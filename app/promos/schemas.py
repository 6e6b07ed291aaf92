"""Promo I/O. Codes are case-insensitive: accepted in any case, stored and returned lower-case."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypeAliasType

from app.core.money import Money, PositiveAmount
from app.credits.schemas import GrantOut
from app.users.schemas import UserId

CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_INT4_MAX = 2_147_483_647  # the columns are INTEGER

PromoCode = Annotated[
    str,
    Field(
        pattern=CODE_PATTERN,
        description="1-64 characters of A-Z, a-z, 0-9, '_' and '-'; case-insensitive "
        "(stored and returned lower-case)",
        examples=["SAVE10"],
    ),
]
TierId = Annotated[str, Field(min_length=1, max_length=255)]

# The documented order in which eligibility is evaluated; the first failing check is the reason.
EligibilityReason = TypeAliasType(
    "EligibilityReason",
    Literal[
        "promo_not_found",
        "promo_inactive",
        "promo_not_started",
        "promo_expired",
        "promo_exhausted",
        "already_claimed",
        "not_eligible",
    ],
)

_DESCRIPTIONS: dict[str, str] = {
    "description": "Free text shown to operators",
    "max_redemptions": "Total claims allowed across all users; null = unlimited",
    "max_per_user": "Claims allowed per user",
    "starts_at": "Claims are refused before this instant; null = no start",
    "expires_at": "Claims are refused from this instant on (must be after starts_at); null = never",
    "eligible_tier_ids": "Only users in one of these tiers may claim; null or [] = any tier",
    "eligible_user_ids": "Only these users may claim; null or [] = any user",
    "new_users_only": "Only users created at or after the promo's creation may claim "
    "(a user that does not exist yet counts as new)",
    "credit_expires_in_days": "The granted credits expire this many days after the claim; "
    "null = never",
    "active": "An inactive promo cannot be claimed",
}


def _normalise_ids(value: list[str] | None) -> list[str] | None:
    """Drop duplicates (keeping order); an empty list means no restriction, like null."""
    if not value:
        return None
    return list(dict.fromkeys(value))


class _PromoRules(BaseModel):
    """Fields shared by create and update, with their limits."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(
        default=None, max_length=500, description=_DESCRIPTIONS["description"]
    )
    max_redemptions: int | None = Field(
        default=None, ge=1, le=_INT4_MAX, description=_DESCRIPTIONS["max_redemptions"]
    )
    starts_at: AwareDatetime | None = Field(default=None, description=_DESCRIPTIONS["starts_at"])
    expires_at: AwareDatetime | None = Field(default=None, description=_DESCRIPTIONS["expires_at"])
    eligible_tier_ids: list[TierId] | None = Field(
        default=None, max_length=100, description=_DESCRIPTIONS["eligible_tier_ids"]
    )
    eligible_user_ids: list[UserId] | None = Field(
        default=None, max_length=1000, description=_DESCRIPTIONS["eligible_user_ids"]
    )
    credit_expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description=_DESCRIPTIONS["credit_expires_in_days"]
    )

    _normalise = field_validator("eligible_tier_ids", "eligible_user_ids")(_normalise_ids)

    @model_validator(mode="after")
    def _window(self) -> Any:
        if self.starts_at and self.expires_at and self.expires_at <= self.starts_at:
            raise ValueError("expires_at must be after starts_at")
        return self


class PromoCreate(_PromoRules):
    code: PromoCode
    credits: PositiveAmount = Field(description="Credits granted per claim")
    max_per_user: int = Field(default=1, ge=1, le=_INT4_MAX, description="Claims allowed per user")
    new_users_only: bool = Field(default=False, description=_DESCRIPTIONS["new_users_only"])
    active: bool = Field(default=True, description=_DESCRIPTIONS["active"])


_REQUIRED_ON_THE_PROMO = ("max_per_user", "new_users_only", "active")


def _not_nullable(schema: dict[str, Any]) -> None:
    """Publish the fields a patch may omit but not null as their plain type (no null branch)."""
    for name in _REQUIRED_ON_THE_PROMO:
        prop = schema["properties"][name]
        (plain,) = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
        prop.update(plain)


class PromoPatch(_PromoRules):
    """Only the fields sent change; null clears an optional field. code and credits are fixed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_nullable)

    max_per_user: int | None = Field(
        default=None, ge=1, le=_INT4_MAX, description=_DESCRIPTIONS["max_per_user"]
    )
    new_users_only: bool | None = Field(default=None, description=_DESCRIPTIONS["new_users_only"])
    active: bool | None = Field(default=None, description=_DESCRIPTIONS["active"])

    @model_validator(mode="after")
    def _required_not_null(self) -> Any:
        for name in _REQUIRED_ON_THE_PROMO:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with their (normalised) values."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class PromoOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str = Field(description="Lower-case")
    credits: Money
    description: str | None
    max_redemptions: int | None
    max_per_user: int
    starts_at: datetime | None
    expires_at: datetime | None
    eligible_tier_ids: list[str] | None
    eligible_user_ids: list[str] | None
    new_users_only: bool
    credit_expires_in_days: int | None
    active: bool
    redemptions_count: int
    created_at: datetime
    updated_at: datetime


class EligibilityOut(BaseModel):
    eligible: bool
    reason: EligibilityReason | None = Field(
        description="The first failing check in the documented order; null when eligible"
    )


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId


class ClaimOut(BaseModel):
    grant: GrantOut = Field(description="The grant created by the claim (source 'promo')")
    balance: Money


class RedemptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str
    grant_id: uuid.UUID
    created_at: datetime
