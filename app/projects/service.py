"""Projects (tenants) and their settings."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import service as api_keys
from app.auth.service import announce_project_change
from app.core.errors import NotFound
from app.core.ids import uuid7
from app.db.models import ApiKey, Project
from app.projects.schemas import ProjectOut, ProjectPatch, ProjectSettings, ProjectSettingsOut


class ProjectNotFound(NotFound):
    slug = "project_not_found"
    title = "No such project"


def to_out(project: Project) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        name=project.name,
        settings=ProjectSettingsOut.model_validate(
            ProjectSettings.model_validate(project.settings).model_dump()
        ),
        created_at=project.created_at,
    )


async def create(session: AsyncSession, *, name: str) -> tuple[Project, ApiKey, str]:
    """A new project with one admin key; the key's secret is returned once."""
    settings = ProjectSettings().model_dump(mode="python")
    stmt = insert(Project).values(id=uuid7(), name=name, settings=settings).returning(Project)
    project = (await session.execute(stmt)).scalar_one()
    key, secret = await api_keys.create(session, project.id, name="bootstrap", scopes=["admin"])
    return project, key, secret


async def get(session: AsyncSession, project_id: uuid.UUID) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise ProjectNotFound()
    return project


async def list_projects(
    session: AsyncSession, *, limit: int, after: uuid.UUID | None
) -> list[Project]:
    """Operator-only: every project (this is the one unscoped query, by design)."""
    stmt = select(Project)
    if after is not None:
        stmt = stmt.where(Project.id > after)
    return list((await session.execute(stmt.order_by(Project.id).limit(limit + 1))).scalars())


async def patch(session: AsyncSession, project_id: uuid.UUID, body: ProjectPatch) -> Project:
    project = await get(session, project_id)
    values: dict[str, object] = {}
    if body.name is not None:
        values["name"] = body.name
    if body.settings is not None:
        merged = ProjectSettings.model_validate(
            {**project.settings, **body.settings.model_dump(exclude_unset=True, exclude_none=True)}
        )
        values["settings"] = merged.model_dump(mode="python")
    if values:
        await session.execute(
            update(Project).where(Project.id == project_id).values(**values, updated_at=func.now())
        )
        await session.refresh(project)
        await announce_project_change(session, project_id)
    return project
