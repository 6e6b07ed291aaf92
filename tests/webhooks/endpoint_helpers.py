"""Shared by the webhook endpoint API tests: endpoints made through the API, rows read and
written directly (deliveries and attempts are the dispatcher's to write)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text

from app.core.ids import uuid7
from app.db.session import Database
from tests.conftest import Project

# A reserved name (RFC 2606) that never resolves: nothing is ever sent anywhere.
URL = "https://hooks.invalid/creditd"


async def create(project: Project, **fields: Any) -> dict[str, Any]:
    r = await project.post("/v1/webhook-endpoints", {"url": URL, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def rows(db: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with db.transaction() as session:
        result = await session.execute(text(sql), params)
        return [dict(m) for m in result.mappings()]


async def execute(db: Database, sql: str, **params: Any) -> None:
    async with db.transaction() as session:
        await session.execute(text(sql), params)


async def endpoint_row(db: Database, endpoint_id: str) -> dict[str, Any]:
    (row,) = await rows(db, "SELECT * FROM webhook_endpoints WHERE id = :id", id=endpoint_id)
    return row


async def deliveries(db: Database, event_id: str) -> list[dict[str, Any]]:
    return await rows(
        db,
        "SELECT * FROM webhook_deliveries WHERE event_id = :e ORDER BY endpoint_id",
        e=event_id,
    )


async def grant_event(project: Project, user_id: str = "u") -> str:
    """A `credits.granted` event of the project (a user granted credits): its id."""
    r = await project.post("/v1/users", {"id": user_id})
    assert r.status_code in (201, 409), r.text
    await project.grant(user_id, 5)
    r = await project.get("/v1/events", params={"type": "credits.granted", "user_id": user_id})
    assert r.status_code == 200, r.text
    return str(r.json()["data"][-1]["id"])


async def insert_delivery(
    db: Database,
    project: Project,
    *,
    event_id: str,
    endpoint_id: str,
    status: str = "pending",
    attempts: int = 0,
    lease_token: uuid.UUID | None = None,
) -> str:
    delivery_id = str(uuid7())
    await execute(
        db,
        "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, status, attempts,"
        " next_attempt_at, lease_token) VALUES (:id, :p, :ep, :ev, :s, :a,"
        " CASE WHEN :s = 'pending' THEN now() END, :lease)",
        id=delivery_id,
        p=project.id,
        ep=endpoint_id,
        ev=event_id,
        s=status,
        a=attempts,
        lease=lease_token,
    )
    return delivery_id


async def insert_attempt(
    db: Database,
    project: Project,
    *,
    delivery_id: str,
    endpoint_id: str,
    event_id: str,
    attempt: int,
    status_code: int | None,
    succeeded: bool,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> str:
    attempt_id = str(uuid7())
    await execute(
        db,
        "INSERT INTO webhook_attempts (id, project_id, delivery_id, endpoint_id, event_id,"
        " attempt, status_code, latency_ms, response_excerpt, error, succeeded,"
        " next_attempt_at) VALUES (:id, :p, :d, :ep, :ev, :n, :code, 42, :excerpt, :err, :ok,"
        " :next)",
        id=attempt_id,
        p=project.id,
        d=delivery_id,
        ep=endpoint_id,
        ev=event_id,
        n=attempt,
        code=status_code,
        excerpt=None if status_code is None else f"answer {attempt}",
        err=error,
        ok=succeeded,
        next=next_attempt_at,
    )
    return attempt_id


async def forget_endpoints(db: Database, project: Project) -> None:
    """Delete the project's endpoints (and so their pending deliveries): no dispatcher running
    later in the suite finds work these tests left behind."""
    await execute(db, "DELETE FROM webhook_endpoints WHERE project_id = :p", p=project.id)
