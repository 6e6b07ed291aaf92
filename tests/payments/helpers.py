"""Payments recorded straight through the repository (no provider can be called here) and
facts applied through the service, each in its own real transaction, like webhooks."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from app.core.clock import utcnow
from app.core.ids import uuid7
from app.db.models import Payment
from app.db.session import Database
from app.integrations.base import PaymentFact, PaymentRef, PaymentSucceeded
from app.payments import repository as repo
from app.payments import service
from tests.conftest import Project
from tests.helpers import body


async def new_payment(
    db: Database,
    project: Project,
    *,
    user_id: str = "u",
    amount: str = "10.00",
    amount_minor: int = 1000,
    currency: str = "USD",
    credits: Decimal | int = 100,
    provider: str = "razorpay",
    order_id: str | None = None,
    **extra: Any,
) -> Payment:
    tag = uuid.uuid4().hex[:12]
    async with db.transaction() as session:
        return await repo.insert_payment(
            session,
            {
                "project_id": uuid.UUID(project.id),
                "id": uuid7(),
                "user_id": user_id,
                "kind": "top_up",
                "provider": provider,
                "status": "created",
                "amount": Decimal(amount),
                "currency": currency,
                "amount_minor": amount_minor,
                "credits": Decimal(credits),
                "provider_reference": f"plink_{tag}",
                "provider_order_id": order_id,
                "checkout_url": f"https://pay.example/{tag}",
                "reconcile_at": utcnow(),
                **extra,
            },
        )


async def apply(
    db: Database, project: Project, fact: PaymentFact, provider: str = "razorpay"
) -> str:
    async with db.transaction() as session:
        outcome, _ = await service.apply_payment_fact(
            session, uuid.UUID(project.id), provider, fact
        )
    return outcome


def paid(payment: Payment, *, ppid: str | None = "pay_1", **ref: Any) -> PaymentSucceeded:
    return PaymentSucceeded(
        ref=PaymentRef(**(ref or {"payment_id": payment.id})),
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        provider_payment_id=ppid,
    )


async def payment_json(project: Project, payment: Payment) -> Any:
    r = await project.get(f"/v1/payments/{payment.id}")
    assert r.status_code == 200, r.text
    return body(r)


async def grants(project: Project, user_id: str = "u") -> list[Any]:
    r = await project.get(f"/v1/users/{user_id}/grants")
    assert r.status_code == 200, r.text
    return list(body(r)["data"])


async def event_types(project: Project, type: str) -> list[Any]:
    r = await project.get("/v1/events", params={"type": type})
    assert r.status_code == 200, r.text
    return list(body(r)["data"])
