from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.freeform import FREEFORM_DOC, FREEFORM_RULE
from app.core.money import Money

USER_ID_PATTERN = r"^[!-.0-~]{1,255}$"
UserId = Annotated[
    str,
    Field(
        pattern=USER_ID_PATTERN,
        description="The project's own id for the user: 1-255 printable ASCII characters, "
        "no spaces or '/'",
        examples=["u_1"],
    ),
]
# Free-form metadata: at most 50 keys, within the free-form JSON limits (app.core.freeform).
Metadata = Annotated[dict[str, Any], Field(max_length=50), FREEFORM_RULE, FREEFORM_DOC]


class Balance(BaseModel):
    available: Money
    held: Money
    total: Money


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UserId
    tier_id: str | None = Field(default=None, max_length=255)
    metadata: Metadata = Field(default_factory=dict)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: Metadata | None = Field(
        default=None, description="Merged into the existing metadata; a null value removes a key"
    )


class UserOut(BaseModel):
    id: str
    tier_id: str | None
    features: dict[str, Any] = Field(description="The features of the user's tier")
    metadata: dict[str, Any]
    created_at: datetime
    balance: Balance
