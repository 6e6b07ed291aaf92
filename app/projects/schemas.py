from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.core.money import Money, PositiveAmount


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_create_users: bool = True
    default_hold_ttl_seconds: int = Field(default=600, ge=1, le=7 * 86400)
    low_balance_thresholds: list[PositiveAmount] = Field(default_factory=list, max_length=20)


class ProjectSettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auto_create_users: bool | None = None
    default_hold_ttl_seconds: int | None = Field(default=None, ge=1, le=7 * 86400)
    low_balance_thresholds: list[PositiveAmount] | None = Field(default=None, max_length=20)


class ProjectSettingsOut(BaseModel):
    """The settings as returned: every field present, amounts as exact output numbers."""

    auto_create_users: bool
    default_hold_ttl_seconds: int
    low_balance_thresholds: list[Money]


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    settings: ProjectSettingsOut
    created_at: datetime


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    settings: ProjectSettingsPatch | None = None
