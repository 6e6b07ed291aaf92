from __future__ import annotations

from fastapi import APIRouter, Request

from app.auth.dependencies import AdminKey, ReadKey
from app.auth.service import KeyCache
from app.db.session import Session
from app.projects import service
from app.projects.schemas import ProjectOut, ProjectPatch
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1/project", tags=["project"], route_class=TransactionalRoute)


@router.get(
    "", operation_id="project_get", summary="Get the key's project", response_model=ProjectOut
)
async def get_project(session: Session, principal: ReadKey) -> ProjectOut:
    return service.to_out(await service.get(session, principal.project_id))


@router.patch(
    "",
    operation_id="project_update",
    summary="Update the project's name or settings",
    response_model=ProjectOut,
)
async def patch_project(
    request: Request, session: Session, principal: AdminKey, body: ProjectPatch
) -> ProjectOut:
    project = await service.patch(session, principal.project_id, body)
    cache: KeyCache = request.app.state.key_cache
    cache.invalidate_project(principal.project_id)
    return service.to_out(project)
