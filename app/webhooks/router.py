"""Outbound webhook endpoints (`/v1/webhook-endpoints`) and event redelivery (admin scope)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.auth.dependencies import AdminKey
from app.core.cursors import parse_id, uuid_cursor
from app.core.errors import problem_responses
from app.core.freeform import FreeformOverLimits
from app.core.pagination import Page, PageParams, make_page, uuid_page_params
from app.core.secrets import Secrets
from app.core.settings import Settings, WebhookSettings
from app.db.session import Session
from app.events import service as events
from app.events.schemas import EventOut
from app.routing import TransactionalRoute
from app.webhooks import service
from app.webhooks.exceptions import (
    InvalidWebhookUrl,
    WebhookEndpointDisabled,
    WebhookEndpointLimit,
    WebhookEndpointNotFound,
)
from app.webhooks.schemas import (
    RedeliverIn,
    RedeliverOut,
    RotateSecretIn,
    WebhookAttemptOut,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointPatch,
    WebhookEndpointWithSecret,
)

router = APIRouter(
    prefix="/v1/webhook-endpoints", tags=["webhook endpoints"], route_class=TransactionalRoute
)
events_router = APIRouter(prefix="/v1/events", tags=["events"], route_class=TransactionalRoute)


def _webhook_settings(request: Request) -> WebhookSettings:
    settings: Settings = request.app.state.settings
    return settings.webhooks


Webhooks = Annotated[WebhookSettings, Depends(_webhook_settings)]

_SIGNING = (
    " Requests are signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,"
    " `webhook-signature: v1,<base64 HMAC-SHA256>`) with `secret`, which is shown only here"
    " and on rotate-secret, and stored encrypted."
)


@router.post(
    "",
    operation_id="webhook_endpoints_create",
    summary="Register a webhook endpoint (its signing secret is shown only here)",
    description="The endpoint is sent every event of the project written from now on whose"
    " type matches `events`." + _SIGNING + f" A project has at most {service.MAX_ENDPOINTS}"
    " endpoints (409 `webhook_endpoint_limit`). A URL creditd will not call (see `url`) is"
    " 422 `invalid_webhook_url`.",
    status_code=201,
    response_model=WebhookEndpointWithSecret,
    responses=problem_responses(InvalidWebhookUrl, WebhookEndpointLimit),
)
async def create_endpoint(
    session: Session,
    principal: AdminKey,
    settings: Webhooks,
    box: Secrets,
    body: WebhookEndpointCreate,
) -> WebhookEndpointWithSecret:
    return await service.create(session, principal.project_id, body, settings=settings, box=box)


@router.get(
    "",
    operation_id="webhook_endpoints_list",
    summary="List webhook endpoints, oldest first (no secrets)",
    response_model=Page[WebhookEndpointOut],
)
async def list_endpoints(
    session: Session, principal: AdminKey, page: Annotated[PageParams, Depends(uuid_page_params)]
) -> Page[WebhookEndpointOut]:
    rows = await service.list_endpoints(
        session, principal.project_id, limit=page.limit, after=uuid_cursor(page.starting_after)
    )
    return make_page(rows, page.limit, lambda e: e.id)


@router.get(
    "/{endpoint_id}",
    operation_id="webhook_endpoints_get",
    summary="Get a webhook endpoint (no secret)",
    response_model=WebhookEndpointOut,
    responses=problem_responses(WebhookEndpointNotFound),
)
async def get_endpoint(
    session: Session, principal: AdminKey, endpoint_id: str
) -> WebhookEndpointOut:
    eid = parse_id(endpoint_id, WebhookEndpointNotFound)
    return service.view(await service.get(session, principal.project_id, eid))


@router.patch(
    "/{endpoint_id}",
    operation_id="webhook_endpoints_update",
    summary="Update a webhook endpoint: URL, events, description, enabled, metadata",
    description="Only the fields sent change. `enabled: false` disables it (reason `manual`)"
    " and cancels its pending deliveries; `enabled: true` re-enables a disabled endpoint and"
    " clears `disabled_reason` and `failing_since` (canceled deliveries stay canceled: use"
    " `POST /v1/events/{id}/redeliver`). A new `url` also clears `failing_since`.",
    response_model=WebhookEndpointOut,
    responses=problem_responses(WebhookEndpointNotFound, InvalidWebhookUrl, FreeformOverLimits),
)
async def update_endpoint(
    session: Session,
    principal: AdminKey,
    settings: Webhooks,
    endpoint_id: str,
    body: WebhookEndpointPatch,
) -> WebhookEndpointOut:
    eid = parse_id(endpoint_id, WebhookEndpointNotFound)
    return await service.update(session, principal.project_id, eid, body, settings=settings)


@router.delete(
    "/{endpoint_id}",
    operation_id="webhook_endpoints_delete",
    summary="Delete a webhook endpoint with its deliveries and their attempts",
    status_code=204,
    response_class=Response,
    responses=problem_responses(WebhookEndpointNotFound),
)
async def delete_endpoint(session: Session, principal: AdminKey, endpoint_id: str) -> Response:
    await service.delete(
        session, principal.project_id, parse_id(endpoint_id, WebhookEndpointNotFound)
    )
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    operation_id="webhook_endpoints_rotate_secret",
    summary="Replace the endpoint's signing secret (the new one is shown only here)",
    description="The replaced secret keeps signing, as a second `v1,` signature, for"
    " `grace_seconds` (default 24 h; 0: not at all), shown as `previous_secret_expires_at`."
    " A rotation within the grace of the previous one retires the oldest secret.",
    response_model=WebhookEndpointWithSecret,
    responses=problem_responses(WebhookEndpointNotFound),
)
async def rotate_secret(
    session: Session,
    principal: AdminKey,
    settings: Webhooks,
    box: Secrets,
    endpoint_id: str,
    body: RotateSecretIn | None = None,
) -> WebhookEndpointWithSecret:
    eid = parse_id(endpoint_id, WebhookEndpointNotFound)
    return await service.rotate_secret(
        session,
        principal.project_id,
        eid,
        grace_seconds=(body or RotateSecretIn()).grace_seconds,
        settings=settings,
        box=box,
    )


@router.post(
    "/{endpoint_id}/test",
    operation_id="webhook_endpoints_test",
    summary="Send a `webhook.test` event to this endpoint",
    description="Writes a `webhook.test` event (`data`: `endpoint_id`, `message`) owed to this"
    " endpoint only, whatever its `events`, and answers it (202): the dispatcher sends it"
    " soon after; follow it with `GET .../deliveries?event_id=`. 409"
    " `webhook_endpoint_disabled` for a disabled endpoint.",
    status_code=202,
    response_model=EventOut,
    responses=problem_responses(WebhookEndpointNotFound, WebhookEndpointDisabled),
)
async def test_endpoint(session: Session, principal: AdminKey, endpoint_id: str) -> EventOut:
    eid = parse_id(endpoint_id, WebhookEndpointNotFound)
    event = await service.send_test(session, principal.project_id, eid)
    return events.to_out(event, "pending")


@router.get(
    "/{endpoint_id}/deliveries",
    operation_id="webhook_endpoints_list_deliveries",
    summary="List the endpoint's delivery attempts, newest first",
    description="Every HTTP request made to the endpoint (one per attempt of each delivery),"
    " newest first: `starting_after` is the id of the last attempt seen and the page holds"
    " older ones. `event_id` keeps the attempts of one event.",
    response_model=Page[WebhookAttemptOut],
    responses=problem_responses(WebhookEndpointNotFound),
)
async def list_deliveries(
    session: Session,
    principal: AdminKey,
    endpoint_id: str,
    page: Annotated[PageParams, Depends(uuid_page_params)],
    event_id: Annotated[uuid.UUID | None, Query(description="Only this event's attempts")] = None,
) -> Page[WebhookAttemptOut]:
    eid = parse_id(endpoint_id, WebhookEndpointNotFound)
    rows = await service.list_attempts(
        session,
        principal.project_id,
        eid,
        limit=page.limit,
        before=uuid_cursor(page.starting_after),
        event_id=event_id,
    )
    return make_page(rows, page.limit, lambda a: a.id)


@events_router.post(
    "/{event_id}/redeliver",
    operation_id="events_redeliver",
    summary="Send an event to webhook endpoints again",
    description="Makes the event's delivery pending again, due now, with its attempt count"
    " reset (or creates it), for every enabled endpoint subscribed to the event's type, or"
    " only for `endpoint_id` (whatever its subscriptions). A `webhook.test` event goes back"
    " only to the endpoints it was sent to. An attempt in flight when this runs is recorded"
    " but no longer changes the delivery. No endpoint wants the event: 202 with an empty"
    " `deliveries`. 404 `webhook_endpoint_not_found` for an unknown `endpoint_id`, 409"
    " `webhook_endpoint_disabled` for a disabled one.",
    status_code=202,
    response_model=RedeliverOut,
    responses=problem_responses(
        events.EventNotFound, WebhookEndpointNotFound, WebhookEndpointDisabled
    ),
)
async def redeliver(
    session: Session, principal: AdminKey, event_id: str, body: RedeliverIn | None = None
) -> RedeliverOut:
    eid = parse_id(event_id, events.EventNotFound)
    endpoint_id = (body or RedeliverIn()).endpoint_id
    return await service.redeliver(session, principal.project_id, eid, endpoint_id=endpoint_id)
