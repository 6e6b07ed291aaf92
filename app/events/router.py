from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth.dependencies import ReadKey
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import problem_responses
from app.core.money import UtcDatetime
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.db.session import Session
from app.events import service
from app.events.schemas import EventOut
from app.routing import TransactionalRoute
from app.webhooks import service as webhooks

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=TransactionalRoute)


@router.get(
    "",
    operation_id="events_list",
    summary="List events (the outbox), oldest first",
    description="Each with its `delivery_status` to the project's webhook endpoints.",
    response_model=Page[EventOut],
)
async def list_events(
    session: Session,
    principal: ReadKey,
    page: Annotated[PageParams, Depends(uuid_page_params)],
    type: Annotated[str | None, Query(max_length=100)] = None,
    user_id: Annotated[str | None, Query(max_length=255)] = None,
    created_after: UtcDatetime | None = None,
) -> Page[EventOut]:
    rows = await service.list_events(
        session,
        principal.project_id,
        limit=page.limit,
        after=uuid_cursor(page.starting_after),
        type=type,
        user_id=user_id,
        created_after=created_after,
    )
    statuses = await webhooks.delivery_statuses(session, principal.project_id, rows)
    items = [service.to_out(r, statuses[r.id]) for r in rows]
    return make_page(items, page.limit, lambda e: e.id)


@router.get(
    "/{event_id}",
    operation_id="events_get",
    summary="Get one event",
    description="With its `delivery_status` to the project's webhook endpoints.",
    response_model=EventOut,
    responses=problem_responses(service.EventNotFound),
)
async def get_event(session: Session, principal: ReadKey, event_id: str) -> EventOut:
    eid = parse_id(event_id, service.EventNotFound)
    event = await service.get(session, principal.project_id, eid)
    statuses = await webhooks.delivery_statuses(session, principal.project_id, [event])
    return service.to_out(event, statuses[event.id])
