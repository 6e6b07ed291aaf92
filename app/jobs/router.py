from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from app.auth.dependencies import ReadKey, WriteKey
from app.core.errors import problem_responses
from app.core.pagination import Page, PageParams, make_page, page_params
from app.db.session import Session
from app.jobs import service
from app.jobs.exceptions import JobNotFound
from app.jobs.schemas import JobIn, JobOut
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=TransactionalRoute)
Name = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,200}$", description="e.g. batch_job, report.daily")
]


@router.put(
    "/{name}",
    operation_id="jobs_put",
    summary="Create or replace a fixed-cost job's price",
    response_model=JobOut,
)
async def put_job(session: Session, principal: WriteKey, name: Name, body: JobIn) -> JobOut:
    return JobOut.model_validate(await service.upsert(session, principal.project_id, name, body))


@router.get("", operation_id="jobs_list", summary="List jobs", response_model=Page[JobOut])
async def list_jobs(
    session: Session, principal: ReadKey, page: Annotated[PageParams, Depends(page_params)]
) -> Page[JobOut]:
    rows = await service.list_jobs(
        session, principal.project_id, limit=page.limit, after=page.starting_after
    )
    return make_page([JobOut.model_validate(r) for r in rows], page.limit, lambda j: j.name)


@router.get(
    "/{name}",
    operation_id="jobs_get",
    summary="Get a job's price",
    response_model=JobOut,
    responses=problem_responses(JobNotFound),
)
async def get_job(session: Session, principal: ReadKey, name: Name) -> JobOut:
    return JobOut.model_validate(await service.get(session, principal.project_id, name))


@router.delete(
    "/{name}",
    operation_id="jobs_delete",
    summary="Delete a job's price",
    status_code=204,
    response_class=Response,
    responses=problem_responses(JobNotFound),
)
async def delete_job(session: Session, principal: WriteKey, name: Name) -> Response:
    await service.delete(session, principal.project_id, name)
    return Response(status_code=204)
