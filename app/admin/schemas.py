from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.api_keys.schemas import ApiKeyScope
from app.projects.schemas import ProjectOut


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class BootstrapKey(BaseModel):
    id: str
    key: str
    scopes: list[ApiKeyScope]


class ProjectCreated(ProjectOut):
    api_key: BootstrapKey
