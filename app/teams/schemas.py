from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.money import Money, PositiveAmount
from app.users.schemas import USER_ID_PATTERN, Balance, Metadata

TEAM_ID_PATTERN = USER_ID_PATTERN
TeamId = Annotated[
    str,
    Field(
        pattern=TEAM_ID_PATTERN,
        description="The project's own id for the team: 1-255 printable ASCII characters, "
        "no spaces or '/'",
        examples=["t_acme"],
    ),
]
TeamRole = Literal["owner", "member"]
TeamUsageDefault = Literal["user", "only_team"]


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: TeamId
    name: str | None = Field(default=None, max_length=200)
    metadata: Metadata = Field(default_factory=dict)


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200, description="Absent: unchanged")
    metadata: Metadata | None = Field(
        default=None, description="Merged into the existing metadata; a null value removes a key"
    )


class TeamOut(BaseModel):
    id: str
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    balance: Balance = Field(description="The team's shared account")


class MemberSpendCap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: Literal["day", "month"] = Field(description="A UTC day or calendar month")
    limit: PositiveAmount = Field(
        description="Credits this member may charge the team's account in the window (charged "
        "plus held by pending transactions); a start going over it is denied"
    )


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: TeamRole = "member"
    spend_caps: list[MemberSpendCap] = Field(
        default_factory=list,
        max_length=2,
        description="Replaces the member's caps; at most one per period",
    )

    @field_validator("spend_caps")
    @classmethod
    def _one_per_period(cls, caps: list[MemberSpendCap]) -> list[MemberSpendCap]:
        if len({c.period for c in caps}) != len(caps):
            raise ValueError("at most one cap per period")
        return caps


class MemberCapOut(BaseModel):
    period: Literal["day", "month"]
    limit: Money


class MemberOut(BaseModel):
    team_id: str
    user_id: str
    role: TeamRole
    spend_caps: list[MemberCapOut]
    created_at: datetime
    updated_at: datetime
