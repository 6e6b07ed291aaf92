from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.money import Money, PositiveAmount
from app.payments import currency

TeamUsageDefault = Literal["user", "only_team"]


def _rates(value: dict[str, PositiveAmount]) -> dict[str, PositiveAmount]:
    """Currency codes upper-cased; a code that is no payable ISO 4217 currency is refused."""
    out: dict[str, PositiveAmount] = {}
    for code, rate in value.items():
        iso = currency.normalize(code)
        if iso is None:
            raise ValueError(f"{code!r} is not an ISO 4217 currency code")
        if iso in out:
            raise ValueError(f"{iso} appears twice")
        out[iso] = rate
    return out


# Credits per major unit of a currency (10 USD x 100 = 1000 credits): lets a top-up name only
# the amount paid.
CreditsPerUnit = Annotated[
    dict[str, PositiveAmount],
    Field(
        max_length=200,
        description='Credits per major unit of each currency, e.g. {"USD": 100}; lets '
        "POST /v1/payments omit credits",
    ),
    AfterValidator(_rates),
]


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_create_users: bool = True
    default_hold_ttl_seconds: int = Field(default=600, ge=1, le=7 * 86400)
    low_balance_thresholds: list[PositiveAmount] = Field(default_factory=list, max_length=20)
    credits_per_unit: CreditsPerUnit = Field(default_factory=dict)
    team_usage_default: TeamUsageDefault = Field(
        default="user",
        description="Which account a usage call without `team_id` charges: `user` (the user's "
        "own) or `only_team` (the user's team when they belong to exactly one, else their own)",
    )


class ProjectSettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_create_users: bool | None = None
    default_hold_ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 86400)
    low_balance_thresholds: list[PositiveAmount] | None = Field(default=None, max_length=20)
    credits_per_unit: CreditsPerUnit | None = Field(
        default=None, description="Replaces the whole map; {} removes every rate"
    )
    team_usage_default: TeamUsageDefault | None = None


class ProjectSettingsOut(BaseModel):
    """The settings as returned: every field present, amounts as exact output numbers."""

    auto_create_users: bool
    default_hold_ttl_seconds: int
    low_balance_thresholds: list[Money]
    credits_per_unit: dict[str, Money]
    team_usage_default: TeamUsageDefault


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    settings: ProjectSettingsOut
    created_at: datetime


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    settings: ProjectSettingsPatch | None = None
