"""All SQL of the outbound webhooks API: endpoints, their deliveries and attempts, every
statement scoped to one project (except ``creditd rotate-secrets``, operator-wide)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookFanoutCursor,
)
from app.db.scoping import scoped_columns, scoped_delete, scoped_select, scoped_update
from app.db.session import driver

PENDING = "pending"


async def lock_project_endpoints(session: AsyncSession, project_id: uuid.UUID) -> None:
    """Serialise endpoint creation per project until commit, so the limit is exact."""
    await driver(session).execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"webhook-endpoints:{project_id}",
    )


async def count_endpoints(session: AsyncSession, project_id: uuid.UUID) -> int:
    stmt = scoped_columns(WebhookEndpoint, project_id, func.count())
    return int((await session.execute(stmt)).scalar_one())


async def insert_endpoint(session: AsyncSession, values: dict[str, Any]) -> WebhookEndpoint:
    stmt = insert(WebhookEndpoint).values(**values).returning(WebhookEndpoint)
    return (await session.execute(stmt)).scalar_one()


async def get_endpoint(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> WebhookEndpoint | None:
    stmt = (
        scoped_select(WebhookEndpoint, project_id)
        .where(WebhookEndpoint.id == endpoint_id)
        .execution_options(populate_existing=True)
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_endpoints(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[WebhookEndpoint]:
    stmt = scoped_select(WebhookEndpoint, project_id)
    if after is not None:
        stmt = stmt.where(WebhookEndpoint.id > after)
    stmt = stmt.order_by(WebhookEndpoint.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def update_endpoint(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    values: dict[str, Any],
    *,
    metadata_changes: dict[str, Any] | None = None,
) -> WebhookEndpoint:
    """Set ``values``; merge ``metadata_changes`` into the metadata (a None value removes its
    key) in the same statement, so concurrent patches of different keys both land."""
    if metadata_changes is not None:
        kept = {k: v for k, v in metadata_changes.items() if v is not None}
        removed = [k for k, v in metadata_changes.items() if v is None]
        values = {
            **values,
            "metadata_": WebhookEndpoint.metadata_.op("||", return_type=JSONB)(
                bindparam("metadata_kept", kept, type_=JSONB)
            ).op("-", return_type=JSONB)(bindparam("metadata_removed", removed, type_=ARRAY(Text))),
        }
    stmt = (
        scoped_update(WebhookEndpoint, project_id)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(**values, updated_at=func.now())
        .returning(WebhookEndpoint)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def delete_endpoint(
    session: AsyncSession, project_id: uuid.UUID, endpoint_id: uuid.UUID
) -> bool:
    """Delete the endpoint; its deliveries and their attempts go with it (FK cascade)."""
    stmt = (
        scoped_delete(WebhookEndpoint, project_id)
        .where(WebhookEndpoint.id == endpoint_id)
        .returning(WebhookEndpoint.id)
    )
    return (await session.execute(stmt)).first() is not None


async def lock_enabled(
    session: AsyncSession, project_id: uuid.UUID, endpoint_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Lock the endpoints FOR SHARE (in key order) and return those still enabled on the
    version locked: a disable committing meanwhile is waited for, and one after this waits
    for our transaction, so no delivery is made pending on an endpoint that is disabled."""
    if not endpoint_ids:
        return []
    stmt = (
        scoped_columns(WebhookEndpoint, project_id, WebhookEndpoint.id)
        .where(WebhookEndpoint.id.in_(list(endpoint_ids)), WebhookEndpoint.enabled)
        .order_by(WebhookEndpoint.id)
        .with_for_update(read=True)
    )
    return [row[0] for row in (await session.execute(stmt)).all()]


async def insert_aimed_event(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    event_id: uuid.UUID,
    type: str,
    data: dict[str, Any],
) -> Event:
    """An event for one endpoint only: ``fanout_xid`` explicitly NULL, so the dispatcher's
    fan-out never offers it to the project's other endpoints."""
    stmt = (
        insert(Event)
        .values(
            id=event_id, project_id=project_id, type=type, user_id=None, data=data, fanout_xid=None
        )
        .returning(Event)
    )
    return (await session.execute(stmt)).scalar_one()


async def upsert_pending_deliveries(
    session: AsyncSession,
    project_id: uuid.UUID,
    event_id: uuid.UUID,
    endpoint_ids: Sequence[uuid.UUID],
    new_ids: Sequence[uuid.UUID],
) -> list[WebhookDelivery]:
    """Make the event's delivery to each endpoint pending, due now, with no attempt counted
    and no lease (an attempt in flight then no longer changes it): created, or reset."""
    if not endpoint_ids:
        return []
    rows = [
        {
            "id": new_id,
            "project_id": project_id,
            "event_id": event_id,
            "endpoint_id": endpoint_id,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": func.now(),
        }
        for endpoint_id, new_id in zip(endpoint_ids, new_ids, strict=True)
    ]
    insert_rows = insert(WebhookDelivery).values(rows)
    stmt = insert_rows.on_conflict_do_update(
        index_elements=[
            WebhookDelivery.project_id,
            WebhookDelivery.event_id,
            WebhookDelivery.endpoint_id,
        ],
        set_={
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": func.now(),
            "lease_token": None,
            "updated_at": func.now(),
        },
    ).returning(WebhookDelivery)
    result = await session.execute(stmt.execution_options(populate_existing=True))
    return sorted(result.scalars(), key=lambda d: d.endpoint_id)


async def endpoints_with_delivery(
    session: AsyncSession, project_id: uuid.UUID, event_id: uuid.UUID
) -> list[WebhookEndpoint]:
    """The endpoints that already have a delivery of the event."""
    owed = scoped_columns(WebhookDelivery, project_id, WebhookDelivery.endpoint_id).where(
        WebhookDelivery.event_id == event_id
    )
    stmt = (
        scoped_select(WebhookEndpoint, project_id)
        .where(WebhookEndpoint.id.in_(owed))
        .order_by(WebhookEndpoint.id)
    )
    return list((await session.execute(stmt)).scalars())


async def all_endpoints(session: AsyncSession, project_id: uuid.UUID) -> list[WebhookEndpoint]:
    """Every endpoint of the project (a project has a bounded number of them)."""
    stmt = scoped_select(WebhookEndpoint, project_id).order_by(WebhookEndpoint.id)
    return list((await session.execute(stmt)).scalars())


async def subscriptions(
    session: AsyncSession, project_id: uuid.UUID
) -> list[tuple[bool, list[str]]]:
    """(enabled, event types) of every endpoint of the project."""
    stmt = scoped_columns(
        WebhookEndpoint, project_id, WebhookEndpoint.enabled, WebhookEndpoint.event_types
    )
    return [(bool(row[0]), list(row[1])) for row in (await session.execute(stmt)).all()]


async def list_attempts(
    session: AsyncSession,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    event_id: uuid.UUID | None,
) -> list[tuple[WebhookAttempt, str]]:
    """The endpoint's attempts, newest first (ids are UUIDv7), with their event's type."""
    stmt = (
        select(WebhookAttempt, Event.type)
        .join(
            Event,
            (Event.project_id == WebhookAttempt.project_id) & (Event.id == WebhookAttempt.event_id),
        )
        .where(WebhookAttempt.project_id == project_id, WebhookAttempt.endpoint_id == endpoint_id)
    )
    if event_id is not None:
        stmt = stmt.where(WebhookAttempt.event_id == event_id)
    if before is not None:
        stmt = stmt.where(WebhookAttempt.id < before)
    stmt = stmt.order_by(WebhookAttempt.id.desc()).limit(limit + 1)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def delivery_summary(
    session: AsyncSession, project_id: uuid.UUID, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[bool, bool, int]]:
    """Per event: any delivery pending, any failed or canceled, how many deliveries. A pending
    delivery of a disabled endpoint counts as canceled: it is, once the dispatcher's sweep
    (``dispatch_repository.cancel_disabled``) reaches it."""
    if not event_ids:
        return {}
    disabled = scoped_columns(WebhookEndpoint, project_id, WebhookEndpoint.id).where(
        ~WebhookEndpoint.enabled
    )
    doomed = WebhookDelivery.endpoint_id.in_(disabled)
    stmt = (
        scoped_columns(
            WebhookDelivery,
            project_id,
            WebhookDelivery.event_id,
            func.bool_or((WebhookDelivery.status == PENDING) & ~doomed),
            func.bool_or(WebhookDelivery.status.in_(("failed", "canceled")) | doomed),
            func.count(),
        )
        .where(WebhookDelivery.event_id.in_(event_ids))
        .group_by(WebhookDelivery.event_id)
    )
    return {
        row[0]: (bool(row[1]), bool(row[2]), int(row[3]))
        for row in (await session.execute(stmt)).all()
    }


async def fanout_cursor(session: AsyncSession) -> tuple[int, uuid.UUID | None]:
    """How far the dispatcher has fanned events out: (fanout_xid, event_id)."""
    stmt = select(WebhookFanoutCursor.fanout_xid, WebhookFanoutCursor.event_id).where(
        WebhookFanoutCursor.id == 1
    )
    row = (await session.execute(stmt)).first()
    return (0, None) if row is None else (int(row[0]), row[1])


async def lock_all_endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    """Every project's endpoints, locked (``creditd rotate-secrets``: operator-wide)."""
    stmt = (
        select(WebhookEndpoint)
        .order_by(WebhookEndpoint.project_id, WebhookEndpoint.id)
        .with_for_update()
    )
    return list((await session.execute(stmt)).scalars())


async def set_ciphertexts(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    *,
    secret: str,
    previous_secret: str | None,
) -> None:
    """Replace the ciphertexts only (same secrets, new key): ``updated_at`` is left alone."""
    stmt = (
        scoped_update(WebhookEndpoint, endpoint.project_id)
        .where(WebhookEndpoint.id == endpoint.id)
        .values(
            secret_ciphertext=secret,
            previous_secret_ciphertext=previous_secret,
            updated_at=WebhookEndpoint.updated_at,
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)
