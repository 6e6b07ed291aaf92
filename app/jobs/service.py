"""Fixed-cost job prices (the charge itself is in app.transactions)."""

from __future__ import annotations

import uuid

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Job
from app.db.scoping import scoped_delete, scoped_select
from app.jobs.exceptions import JobNotFound, UnknownJob
from app.jobs.schemas import JobIn


async def upsert(session: AsyncSession, project_id: uuid.UUID, name: str, body: JobIn) -> Job:
    stmt = (
        insert(Job)
        .values(project_id=project_id, name=name, price=body.price)
        .on_conflict_do_update(
            index_elements=[Job.project_id, Job.name],
            set_={"price": body.price, "updated_at": func.now()},
        )
        .returning(Job)
    )
    return (await session.execute(stmt)).scalar_one()


async def find(session: AsyncSession, project_id: uuid.UUID, name: str) -> Job | None:
    stmt = scoped_select(Job, project_id).where(Job.name == name)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(session: AsyncSession, project_id: uuid.UUID, name: str) -> Job:
    found = await find(session, project_id, name)
    if found is None:
        raise JobNotFound()
    return found


async def require(session: AsyncSession, project_id: uuid.UUID, name: str) -> Job:
    """The job, or 422 ``unknown_job`` (for usage calls naming it)."""
    found = await find(session, project_id, name)
    if found is None:
        raise UnknownJob(f"Job '{name}' has no price: PUT /v1/jobs/{name} first.")
    return found


async def list_jobs(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Job]:
    stmt = scoped_select(Job, project_id)
    if after is not None:
        stmt = stmt.where(Job.name > after)
    stmt = stmt.order_by(Job.name).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def delete(session: AsyncSession, project_id: uuid.UUID, name: str) -> None:
    result = await session.execute(scoped_delete(Job, project_id).where(Job.name == name))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise JobNotFound()
