"""Driving a project's Stripe account end to end: the project's keys are the fake Stripe's,
checkouts go through the real adapter and the official SDK, and webhooks are the fake's
events signed with Stripe's scheme and POSTed as raw bytes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import text

from app.db.session import Database
from tests.conftest import Project
from tests.fakes.stripe_server import FakeStripe, Obj
from tests.helpers import body

SUCCESS_URL = "https://example.com/paid"


async def configure(project: Project, fake: FakeStripe) -> None:
    r = await project.put(
        "/v1/providers/stripe",
        {"secret_key": fake.secret_key, "webhook_secret": fake.webhook_secret},
    )
    assert r.status_code == 200, r.text


async def top_up(
    project: Project, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    payload = {
        "user_id": "u",
        "provider": "stripe",
        "amount": "10.00",
        "currency": "usd",
        "success_url": SUCCESS_URL,
        **extra,
    }
    return await project.post("/v1/payments", payload, headers=headers or {})


async def created(project: Project, **extra: Any) -> Any:
    r = await top_up(project, **{"credits": 100, **extra})
    assert r.status_code == 201, r.text
    return body(r)


async def deliver(
    project: Project,
    fake: FakeStripe,
    event: Obj,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
) -> httpx.Response:
    raw, headers = fake.sign(event, secret, timestamp)
    return await post_raw(project, raw, headers)


async def post_raw(project: Project, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return await project.client.post(
        f"/v1/webhooks/stripe/{project.id}", content=raw, headers=headers
    )


async def deliver_all(project: Project, fake: FakeStripe, events: list[Obj]) -> list[Any]:
    """Each event once, in order; returns the stored outcomes."""
    outcomes = []
    for event in events:
        r = await deliver(project, fake, event)
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is False, r.text
        outcomes.append(r.json()["outcome"])
    return outcomes


def intent_of(fake: FakeStripe, session_id: str) -> str:
    intent: str = fake.session(session_id)["payment_intent"]
    return intent


async def payment(project: Project, payment_id: str) -> Any:
    r = await project.get(f"/v1/payments/{payment_id}")
    assert r.status_code == 200, r.text
    return body(r)


async def provider_events(db: Database, project: Project) -> list[Any]:
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT event_id, type, outcome FROM provider_events WHERE project_id = :p"
                " ORDER BY created_at"
            ),
            {"p": uuid.UUID(project.id)},
        )
        return list(rows.all())


def signature_failures() -> float:
    value = REGISTRY.get_sample_value(
        "creditd_webhook_signature_failures_total", {"provider": "stripe"}
    )
    return value or 0.0
