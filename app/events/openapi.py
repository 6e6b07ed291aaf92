"""The OpenAPI ``webhooks`` section: one entry per event type, the request creditd sends.

FastAPI publishes the routes of ``app.webhooks`` (an ``APIRouter``) as the OpenAPI 3.1
``webhooks`` map; nothing serves them. Each body is the envelope ``app/webhooks/payload.py``
renders, with that type's ``data`` model from the catalogue.
"""

from __future__ import annotations

import inspect
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Body, Header
from pydantic import BaseModel, Field, create_model
from starlette.responses import Response

from app.events.catalogue import CATALOGUE, EventData, EventType


class WebhookEvent(BaseModel):
    """The body of an outbound webhook (``app/webhooks/payload.py`` renders it)."""

    id: uuid.UUID = Field(
        description="The event's id: the same on every attempt (also the `webhook-id` header); "
        "deduplicate on it"
    )
    type: str = Field(description="The event type")
    timestamp: datetime = Field(description="When the event happened (= created_at)")
    created_at: datetime = Field(description="When the event happened")
    user_id: str | None = Field(description="The user the event is about; null for none")
    sequence: int | None = Field(
        description="Increases with every event written; one user's balance changes are "
        "numbered in the order they happened. Deliveries are not ordered: order by this. "
        "Null only for events written before this version of creditd (order those by "
        "`created_at`)"
    )
    data: EventData = Field(description="The event's data (its schema depends on the type)")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "_").split("_"))


def envelope(entry: EventType) -> type[WebhookEvent]:
    """The body model of ``entry``'s webhook: the envelope with a constant type and its data."""
    # A Literal of a runtime value: the schema's `const`, for generators to discriminate on.
    const = cast(Any, Literal)[entry.name]
    return create_model(
        f"{_camel(entry.name)}Event",
        __base__=WebhookEvent,
        __doc__=f"The `{entry.name}` webhook. {entry.when}",
        type=(const, Field(description="The event type")),
        data=(entry.model, Field(description="The event's data")),
    )


_HEADER_DOCS = {
    "webhook_id": "The event's id, the same on every attempt (Standard Webhooks `webhook-id`)",
    "webhook_timestamp": (
        "Unix seconds when this attempt was signed: refuse it when far from your clock"
        " (the libraries allow 5 minutes)"
    ),
    "webhook_signature": (
        "`v1,<base64 HMAC-SHA256 of '{webhook-id}.{webhook-timestamp}.{body}'>` with the"
        " endpoint's secret; space-separated when two secrets are active (after a rotation)"
    ),
}
_RECEIVED = (
    "Any 2xx: received (the body is ignored). Answer quickly and process afterwards: an attempt"
    " times out after 15 s."
)
_FAILED = (
    "Anything else is a failed attempt, retried on the schedule (honouring `Retry-After` on 429"
    " and 503): a 3xx (redirects are not followed), 4xx, 5xx, a timeout or a refused"
    " connection. 410 Gone disables the endpoint at once."
)


def _describe(entry: EventType) -> str:
    return (
        f"{entry.when}\n\nSigned per Standard Webhooks: verify the signature over the raw"
        " body before parsing it. Delivered at least once and in no particular order:"
        " deduplicate on `id` and order by `sequence` (or `created_at`)."
    )


def _signature(model: type[WebhookEvent]) -> inspect.Signature:
    header = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("body", header, annotation=Annotated[model, Body()])]
    for name, doc in _HEADER_DOCS.items():
        alias = name.replace("_", "-")
        # A string with at most a pattern: the header rule of tests/platform/test_openapi.py.
        pattern = "^[0-9]+$" if name == "webhook_timestamp" else None
        kind = Annotated[str, Header(alias=alias, description=doc, pattern=pattern)]
        params.append(inspect.Parameter(name, header, annotation=kind))
    return inspect.Signature(params)


def router() -> APIRouter:
    """An ``APIRouter`` with one webhook per catalogue type, for ``FastAPI(webhooks=...)``."""
    webhooks = APIRouter()
    for name in sorted(CATALOGUE):
        entry = CATALOGUE[name]

        async def endpoint(**_: Any) -> None:  # never served: a description only
            return None

        endpoint.__signature__ = _signature(envelope(entry))  # type: ignore[attr-defined]
        webhooks.add_api_route(
            name,
            endpoint,
            methods=["POST"],
            operation_id=name.replace(".", "_"),
            summary=name,
            description=_describe(entry),
            tags=["events"],
            status_code=200,
            response_class=Response,
            response_description=_RECEIVED,
            # A "default" answer documents failures, and keeps FastAPI from inventing a 422.
            responses={"default": {"description": _FAILED}},
            openapi_extra={"security": []},
        )
    return webhooks
