"""The outbox: events are rows written in the same transaction as the change they describe."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.http import render_json
from app.core.ids import uuid7
from app.db.models import Event
from app.db.scoping import scoped_select
from app.db.session import driver

_COLUMNS = "id, project_id, type, user_id, data"
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"


def outbox_cte(first: int) -> str:
    """A ``WITH`` item inserting one event from parameters ``$first`` .. ``$first+4``, so a
    hot-path write can carry its event in the same statement (see ``outbox_args``)."""
    params = ", ".join(f"${first + i}" for i in range(5))
    return f"outbox AS (INSERT INTO events ({_COLUMNS}) VALUES ({params}))"


def outbox_args(
    *, project_id: uuid.UUID, type: str, user_id: str | None, data: dict[str, Any]
) -> tuple[Any, ...]:
    """The parameters of ``outbox_cte``, in order."""
    return (uuid7(), project_id, type, user_id, render_json(data).decode())


class EventNotFound(NotFound):
    slug = "event_not_found"
    title = "No such event"


async def record(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    type: str,
    data: dict[str, Any],
    user_id: str | None = None,
) -> uuid.UUID:
    args = outbox_args(project_id=project_id, type=type, user_id=user_id, data=data)
    await driver(session).execute(_INSERT, *args)
    event_id: uuid.UUID = args[0]
    return event_id


async def get(session: AsyncSession, project_id: uuid.UUID, event_id: uuid.UUID) -> Event:
    stmt = scoped_select(Event, project_id).where(Event.id == event_id)
    event = (await session.execute(stmt)).scalar_one_or_none()
    if event is None:
        raise EventNotFound()
    return event


async def list_events(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    limit: int,
    after: uuid.UUID | None,
    type: str | None = None,
    user_id: str | None = None,
    created_after: datetime | None = None,
) -> list[Event]:
    stmt = scoped_select(Event, project_id)
    if type is not None:
        stmt = stmt.where(Event.type == type)
    if user_id is not None:
        stmt = stmt.where(Event.user_id == user_id)
    if created_after is not None:
        stmt = stmt.where(Event.created_at >= created_after)
    if after is not None:
        stmt = stmt.where(Event.id > after)
    stmt = stmt.order_by(Event.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())
