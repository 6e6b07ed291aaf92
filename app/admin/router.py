"""Operator endpoints, guarded by CREDITD_ADMIN_TOKEN rather than an API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.admin.schemas import BootstrapKey, ProjectCreate, ProjectCreated
from app.auth.dependencies import Operator
from app.auth.exceptions import InvalidAdminToken
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.db.session import Session
from app.projects import service as projects
from app.projects.schemas import ProjectOut
from app.routing import OperatorRoute

router = APIRouter(
    prefix="/v1/admin/projects",
    tags=["operator"],
    route_class=OperatorRoute,
    dependencies=[Operator],
    responses=problem_responses(InvalidAdminToken),
)


@router.post(
    "",
    operation_id="admin_projects_create",
    summary="Create a project and its first admin API key",
    status_code=201,
    response_model=ProjectCreated,
)
async def create_project(session: Session, body: ProjectCreate) -> ProjectCreated:
    project, key, secret = await projects.create(session, name=body.name)
    return ProjectCreated(
        **projects.to_out(project).model_dump(),
        api_key=BootstrapKey(id=str(key.id), key=secret, scopes=["admin"]),
    )


@router.get(
    "", operation_id="admin_projects_list", summary="List projects", response_model=Page[ProjectOut]
)
async def list_projects(
    session: Session, page: Annotated[PageParams, Depends(uuid_page_params)]
) -> Page[ProjectOut]:
    rows = await projects.list_projects(
        session, limit=page.limit, after=uuid_cursor(page.starting_after)
    )
    return make_page([projects.to_out(p) for p in rows], page.limit, lambda p: p.id)


@router.get(
    "/{project_id}",
    operation_id="admin_projects_get",
    summary="Get a project",
    response_model=ProjectOut,
    responses=problem_responses(projects.ProjectNotFound),
)
async def get_project(session: Session, project_id: str) -> ProjectOut:
    pid = parse_id(project_id, projects.ProjectNotFound)
    return projects.to_out(await projects.get(session, pid))
