"""All payments SQL: payments and provider events, every statement scoped to one project
(except the reconciliation claim, which works across projects like every worker)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Grant, Payment, ProviderEvent
from app.db.scoping import scoped_columns, scoped_select, scoped_update
from app.db.session import driver
from app.integrations.base import PaymentRef
from app.payments.schemas import PaymentFilters


async def insert_payment(session: AsyncSession, values: dict[str, Any]) -> Payment:
    stmt = insert(Payment).values(**values).returning(Payment)
    return (await session.execute(stmt)).scalar_one()


async def insert_payment_once(session: AsyncSession, values: dict[str, Any]) -> Payment | None:
    """Insert unless a payment with the same provider reference exists (None then)."""
    stmt = (
        insert(Payment)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[Payment.project_id, Payment.provider, Payment.provider_reference],
            index_where=text("provider_reference IS NOT NULL"),
        )
        .returning(Payment)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(
    session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID, *, for_update: bool = False
) -> Payment | None:
    stmt = (
        scoped_select(Payment, project_id)
        .where(Payment.id == payment_id)
        .execution_options(populate_existing=True)
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_payments(
    session: AsyncSession,
    project_id: uuid.UUID,
    filters: PaymentFilters,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Payment]:
    stmt = scoped_select(Payment, project_id)
    if filters.user_id is not None:
        stmt = stmt.where(Payment.user_id == filters.user_id)
    if filters.status is not None:
        stmt = stmt.where(Payment.status == filters.status)
    if filters.provider is not None:
        stmt = stmt.where(Payment.provider == filters.provider)
    if after is not None:
        stmt = stmt.where(Payment.id > after)
    stmt = stmt.order_by(Payment.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def update(
    session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID, values: dict[str, Any]
) -> Payment:
    stmt = (
        scoped_update(Payment, project_id)
        .where(Payment.id == payment_id)
        .values(**values, updated_at=text("now()"))
        .returning(Payment)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def resolve(
    session: AsyncSession, project_id: uuid.UUID, provider: str, ref: PaymentRef
) -> uuid.UUID | None:
    """The payment ``ref`` names, trying its parts in PaymentRef's documented order."""
    base = scoped_columns(Payment, project_id, Payment.id).where(Payment.provider == provider)
    candidates = (
        (Payment.id, ref.payment_id),
        (Payment.provider_reference, ref.reference),
        (Payment.provider_payment_id, ref.provider_payment_id),
        (Payment.provider_order_id, ref.order_id),
    )
    for column, value in candidates:
        if value is None:
            continue
        # An order id is not unique by constraint: the oldest payment behind it wins.
        stmt = base.where(column == value).order_by(Payment.id).limit(1)
        found: uuid.UUID | None = (await session.execute(stmt)).scalar_one_or_none()
        if found is not None:
            return found
    return None


async def set_provider_payment_id(
    session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID, provider_payment_id: str
) -> bool:
    """Record the provider's payment id; False when another payment already holds it (the
    unique index says so even against a concurrent writer)."""
    conn = driver(session)
    await conn.execute("SAVEPOINT provider_payment_id")  # the violation must not end the request
    try:
        await conn.execute(
            "UPDATE payments SET provider_payment_id = $3, updated_at = now() "
            "WHERE project_id = $1 AND id = $2",
            project_id,
            payment_id,
            provider_payment_id,
        )
    except asyncpg.UniqueViolationError:
        await conn.execute("ROLLBACK TO SAVEPOINT provider_payment_id")
        return False
    await conn.execute("RELEASE SAVEPOINT provider_payment_id")
    return True


async def payment_holding(
    session: AsyncSession, project_id: uuid.UUID, provider: str, provider_payment_id: str
) -> uuid.UUID | None:
    stmt = scoped_columns(Payment, project_id, Payment.id).where(
        Payment.provider == provider, Payment.provider_payment_id == provider_payment_id
    )
    found: uuid.UUID | None = (await session.execute(stmt)).scalar_one_or_none()
    return found


async def grant_of(
    session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID
) -> uuid.UUID | None:
    """The grant a payment bought (one at most, by a unique index)."""
    stmt = scoped_columns(Grant, project_id, Grant.id).where(Grant.payment_id == payment_id)
    found: uuid.UUID | None = (await session.execute(stmt)).scalar_one_or_none()
    return found


async def insert_event(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    provider: str,
    event_id: str,
    type: str,
    payload: dict[str, Any],
    body_sha256: bytes | None = None,
) -> bool:
    """Store a verified webhook once; False if this event id, or this exact body, was stored
    before. A concurrent delivery of either waits here for the first one's transaction, then
    gets False."""
    stmt = (
        insert(ProviderEvent)
        .values(
            project_id=project_id,
            provider=provider,
            event_id=event_id,
            type=type,
            outcome="received",
            payload=payload,
            body_sha256=body_sha256,
        )
        # No conflict target: the event id (primary key) and the body hash both count.
        .on_conflict_do_nothing()
        .returning(ProviderEvent.event_id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def set_event_outcome(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    provider: str,
    event_id: str,
    outcome: str,
    payment_id: uuid.UUID | None,
    subscription_id: uuid.UUID | None,
    reference: str | None = None,
    provider_payment_id: str | None = None,
) -> None:
    stmt = (
        scoped_update(ProviderEvent, project_id)
        .where(ProviderEvent.provider == provider, ProviderEvent.event_id == event_id)
        .values(
            outcome=outcome,
            payment_id=payment_id,
            subscription_id=subscription_id,
            reference=reference,
            provider_payment_id=provider_payment_id,
        )
    )
    await session.execute(stmt)


async def lock_reference(
    session: AsyncSession, project_id: uuid.UUID, provider: str, reference: str
) -> None:
    """Serialise, until commit, the recording of the payment under ``reference`` with its
    identification: without it each transaction could miss the other's uncommitted row and
    the provider's payment id would be lost."""
    await driver(session).execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"payment-ref:{project_id}:{provider}:{reference}",
    )


async def pending_identification(
    session: AsyncSession, project_id: uuid.UUID, provider: str, reference: str
) -> ProviderEvent | None:
    """The oldest identification stored "unmatched" for ``reference`` (its payment did not
    exist yet), if any."""
    stmt = (
        scoped_select(ProviderEvent, project_id)
        .where(
            ProviderEvent.provider == provider,
            ProviderEvent.reference == reference,
            ProviderEvent.outcome == "unmatched",
            ProviderEvent.provider_payment_id.is_not(None),
        )
        .order_by(ProviderEvent.created_at)
        .limit(1)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def settle_identification(
    session: AsyncSession, event: ProviderEvent, *, outcome: str, payment_id: uuid.UUID
) -> None:
    stmt = (
        scoped_update(ProviderEvent, event.project_id)
        .where(ProviderEvent.provider == event.provider, ProviderEvent.event_id == event.event_id)
        .values(outcome=outcome, payment_id=payment_id)
    )
    await session.execute(stmt)


async def get_event(
    session: AsyncSession, project_id: uuid.UUID, provider: str, event_id: str
) -> ProviderEvent | None:
    stmt = scoped_select(ProviderEvent, project_id).where(
        ProviderEvent.provider == provider, ProviderEvent.event_id == event_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


_CLAIM = """
UPDATE payments p
SET reconcile_at = $1 + make_interval(secs => least($3, $4 * power(2, p.reconcile_attempts))),
    reconcile_attempts = p.reconcile_attempts + 1
FROM (SELECT project_id, id FROM payments
      WHERE status IN ('created', 'pending') AND reconcile_at <= $1
      ORDER BY reconcile_at
      LIMIT $2
      FOR UPDATE SKIP LOCKED) due
WHERE p.project_id = due.project_id AND p.id = due.id
RETURNING p.project_id, p.id, p.provider, p.provider_reference, p.amount_minor, p.currency,
          p.created_at
"""


async def claim_due(
    session: AsyncSession, *, now: datetime, limit: int, base_seconds: float, cap_seconds: float
) -> list[Any]:
    """Payments due for a lookup, their next lookup already pushed back (doubling, capped):
    a worker that dies before looking them up leaves them due again later, not lost."""
    rows: list[Any] = await driver(session).fetch(
        _CLAIM, now, limit, float(cap_seconds), float(base_seconds)
    )
    return rows
