"""The outbox: events are rows written in the same transaction as the change they describe."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.http import render_json
from app.core.ids import uuid7
from app.db import writes
from app.db.models import Event
from app.db.scoping import scoped_select
from app.db.writes import Write
from app.events.schemas import DeliveryStatus, EventOut

_INSERT = "INSERT INTO events (id, project_id, type, user_id, data) VALUES ($1, $2, $3, $4, $5)"


def outbox(*, project_id: uuid.UUID, type: str, user_id: str | None, data: dict[str, Any]) -> Write:
    """The event as a write that can ride in the statement making the change it describes."""
    return Write(_INSERT, (uuid7(), project_id, type, user_id, render_json(data).decode()))


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
    event = outbox(project_id=project_id, type=type, user_id=user_id, data=data)
    await writes.run(session, [event])
    event_id: uuid.UUID = event.args[0]
    return event_id


def to_out(event: Event, delivery_status: DeliveryStatus) -> EventOut:
    return EventOut(
        id=event.id,
        type=event.type,
        user_id=event.user_id,
        data=event.data,
        created_at=event.created_at,
        delivery_status=delivery_status,
    )


async def get(
    session: AsyncSession, project_id: uuid.UUID, event_id: uuid.UUID, *, key_share: bool = False
) -> Event:
    """The event; ``key_share`` also locks it against deletion (the retention job) until the
    transaction ends, for a caller about to make one of its deliveries pending."""
    stmt = scoped_select(Event, project_id).where(Event.id == event_id)
    if key_share:
        stmt = stmt.with_for_update(read=True, key_share=True)
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
