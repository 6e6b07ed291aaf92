"""Reconciliation: ask the provider about payments nobody heard back about.

A payment still created/pending ``reconcile_after_seconds`` after creation is claimed (SKIP
LOCKED, its next lookup pushed back: doubling, at most an hour) in a short transaction that
commits at once. The provider is then asked with no transaction open, and what it says is
applied in a new transaction through ``service.apply_payment_fact``, exactly like a webhook's
facts: a payment is credited once whether the webhook, this job, or both report it. A worker
that dies between claim and apply loses nothing: the payment is due again later.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog

from app.core.clock import utcnow
from app.core.secrets import SecretBox
from app.core.settings import Settings
from app.db.exceptions import DatabaseFault
from app.db.session import Database
from app.integrations import registry
from app.integrations.base import (
    Fact,
    PaymentExpired,
    PaymentLookup,
    PaymentRef,
    ProviderError,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionStatusChanged,
)
from app.payments import repository as repo
from app.payments import service
from app.providers import service as providers
from app.providers.exceptions import ProviderNotConfigured

log = structlog.get_logger("creditd.payments.reconcile")

MAX_BACKOFF_SECONDS = 3600.0
# The first retry never comes sooner than this, even when lookups start immediately.
MIN_BACKOFF_SECONDS = 60.0


async def reconcile_once(
    db: Database,
    settings: Settings,
    *,
    batch_size: int,
    now: datetime | None = None,
    box: SecretBox | None = None,
) -> int:
    """Look up one batch of due payments; returns how many were looked up."""
    at = now or utcnow()
    cfg = settings.payments
    async with db.transaction() as session:
        due = await repo.claim_due(
            session,
            now=at,
            limit=batch_size,
            base_seconds=max(cfg.reconcile_after_seconds, MIN_BACKOFF_SECONDS),
            cap_seconds=MAX_BACKOFF_SECONDS,
        )
    if not due:
        return 0
    # The worker passes its one box; without one (the CLI, tests) it is built from settings.
    box = box or SecretBox.from_settings(settings)
    for row in due:
        try:
            await reconcile_payment(db, settings, row, box=box, now=at)
        except DatabaseFault as exc:
            log.warning("reconcile_database_fault", payment_id=str(row["id"]), code=exc.slug)
        except Exception:
            log.exception("reconcile_failed", payment_id=str(row["id"]))
    return len(due)


async def reconcile_payment(
    db: Database, settings: Settings, row: Any, *, box: SecretBox, now: datetime
) -> list[str]:
    """Look one claimed payment up and apply the answer; returns the facts' outcomes."""
    project_id: uuid.UUID = row["project_id"]
    payment_id: uuid.UUID = row["id"]
    provider = row["provider"]
    facts: list[Fact] = []
    # Only an answer from the provider may expire a payment: an outage or removed credentials
    # say nothing about whether the payer paid.
    failure: str | None = None
    if row["provider_reference"] is not None:
        try:
            async with db.transaction() as session:
                creds = await providers.credentials(
                    session, project_id, provider, settings=settings.payments, box=box
                )
        except ProviderNotConfigured:
            log.info("reconcile_provider_not_configured", payment_id=str(payment_id))
            creds, failure = None, "provider_not_configured"
        if creds is not None:
            lookup = PaymentLookup(
                payment_id=payment_id,
                reference=row["provider_reference"],
                amount_minor=row["amount_minor"],
                currency=row["currency"],
            )
            try:
                facts = await registry.get(provider).lookup_payment(creds, lookup)
            except ProviderError as exc:
                log.warning(
                    "reconcile_lookup_failed",
                    payment_id=str(payment_id),
                    transient=exc.transient,
                    error=str(exc)[:300],
                )
                failure = "provider_error"
    payment_facts = [f for f in facts if not isinstance(f, _SUBSCRIPTION_FACTS)]
    age = (now - row["created_at"]).total_seconds()
    gave_up = age >= settings.payments.reconcile_give_up_seconds
    if failure is not None:
        if gave_up:
            async with db.transaction() as session:
                await service.reconciliation_failed(session, project_id, payment_id, reason=failure)
        log.info("payment_reconciled", payment_id=str(payment_id), failure=failure)
        return []
    if not payment_facts and gave_up:
        payment_facts = [PaymentExpired(ref=PaymentRef(payment_id=payment_id))]
    outcomes = []
    if payment_facts:
        async with db.transaction() as session:
            for fact in payment_facts:
                outcome, _ = await service.apply_payment_fact(session, project_id, provider, fact)
                outcomes.append(outcome)
    log.info("payment_reconciled", payment_id=str(payment_id), outcomes=outcomes)
    return outcomes


_SUBSCRIPTION_FACTS = (SubscriptionLinked, SubscriptionPeriodPaid, SubscriptionStatusChanged)
