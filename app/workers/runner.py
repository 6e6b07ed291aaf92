"""Background jobs: run by `creditd worker`, or inside `creditd serve` for a single process.

Each job claims its work with SKIP LOCKED, so any number of workers cooperate safely and a
locked row never holds a job up. A job that fails (the database restarting, say) backs off and
runs again; the pool replaces the broken connections meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import structlog

from app.analytics import repository as usage
from app.analytics import rollup
from app.core.clock import utcnow
from app.core.secrets import SecretBox
from app.core.settings import Settings
from app.credits import service as credits
from app.db.exceptions import DatabaseFault
from app.db.session import Database
from app.events.retention import prune_events_once
from app.idempotency import repository as idempotency
from app.payments import reconcile
from app.plans import service as plans
from app.tiers import service as tiers
from app.transactions import service as transactions
from app.webhooks.dispatcher import Dispatcher
from app.webhooks.sender import Sender

log = structlog.get_logger("creditd.worker")
EXPIRING_NOTICE_DAYS = 7


async def sweep_holds_once(db: Database, *, batch_size: int) -> int:
    """Expire due holds in batches until none are left; returns how many were expired."""
    total = 0
    while True:
        async with db.transaction() as session:
            count = await transactions.sweep_expired_holds(session, now=utcnow(), limit=batch_size)
        total += count
        if count == 0:
            return total


async def refill_tiers_once(db: Database, *, batch_size: int) -> int:
    """Grant due tier refills in batches (one transaction each) until none are due."""
    total = 0
    while True:
        async with db.transaction() as session:
            count = await tiers.refill_due(session, now=utcnow(), limit=batch_size)
        total += count
        if count < batch_size:
            return total


async def expire_grants_once(db: Database, *, batch_size: int) -> int:
    """Expire due grants in batches of accounts until none are left (or all are busy)."""
    total = 0
    while True:
        async with db.transaction() as session:
            count = len(await credits.expire_due(session, now=utcnow(), limit=batch_size))
        total += count
        if count == 0:
            return total


async def announce_expiring_once(db: Database, *, batch_size: int) -> int:
    total = 0
    while True:
        async with db.transaction() as session:
            count = await credits.announce_expiring(
                session, now=utcnow(), days=EXPIRING_NOTICE_DAYS, limit=batch_size
            )
        total += count
        if count < batch_size:
            return total


async def renew_subscriptions_once(db: Database, *, batch_size: int) -> int:
    """Renew (or end) due manual subscriptions in batches (one transaction each)."""
    total = 0
    while True:
        async with db.transaction() as session:
            count = await plans.renew_due(session, now=utcnow(), limit=batch_size)
        total += count
        if count < batch_size:
            return total


async def purge_idempotency_once(db: Database, *, batch_size: int) -> int:
    total = 0
    while True:
        async with db.transaction() as session:
            count = await idempotency.purge_expired(session, limit=batch_size)
        total += count
        if count < batch_size:
            return total


async def close_usage_days_once(
    db: Database, *, grace: timedelta, now: datetime | None = None
) -> int:
    """Close every finished UTC day not yet closed, oldest first, one transaction each."""
    total = 0
    while True:
        at = now if now is not None else utcnow()
        async with db.transaction() as session:  # a plain read first: no lock when not due
            closed = await usage.closed_through(session)
        if closed is not None and closed >= rollup.last_closable_day(at, grace):
            return total
        async with db.transaction() as session:
            day = await rollup.close_next_day(session, now=at, grace=grace)
        if day is None:
            return total
        log.info("usage_day_closed", day=day.isoformat())
        total += 1


def backoff(seconds: float, failures: int, cap: float) -> float:
    """The wait before a job's next run: its interval, doubled per consecutive failure, at most
    ``cap`` (or the interval itself when that is longer)."""
    if failures == 0:
        return seconds
    return min(seconds * 2.0 ** (failures - 1), max(cap, seconds))


async def _every(
    name: str, seconds: float, job: Callable[[], Awaitable[int]], *, max_backoff: float
) -> None:
    """Run ``job`` forever. A failure never ends the loop: a transient database fault (the
    database restarting, a lock timeout) is logged as a warning, anything else with its
    traceback, and the job backs off. The pool replaces broken connections meanwhile."""
    failures = 0
    while True:
        try:
            done = await job()
            if failures:
                log.info("job_recovered", job=name, failures=failures)
            failures = 0
            if done:
                log.info("job_done", job=name, count=done)
        except asyncio.CancelledError:
            raise
        except DatabaseFault as exc:
            failures += 1
            log.warning("job_database_fault", job=name, code=exc.slug, failures=failures)
        except Exception:
            failures += 1
            log.exception("job_failed", job=name, failures=failures)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The driver turned our cancellation into its own error (asyncpg does, mid-query):
            # stop anyway, or a shutdown would wait on a loop that never ends.
            raise asyncio.CancelledError
        await asyncio.sleep(backoff(seconds, failures, max_backoff))


async def run_workers(db: Database, settings: Settings, *, dispatch_webhooks: bool = True) -> None:
    """Run every background job until cancelled (and the webhook dispatcher, unless told not
    to: `creditd serve` runs it only with ``webhooks.dispatch_in_process``)."""
    cfg = settings.workers
    box = SecretBox.from_settings(settings)  # provider credentials, endpoint secrets

    def every(
        name: str, seconds: float, job: Callable[[], Awaitable[int]]
    ) -> Coroutine[Any, Any, None]:
        return _every(name, seconds, job, max_backoff=cfg.max_backoff_seconds)

    jobs = [
        every("hold_sweeper", cfg.sweep_interval_seconds,
              lambda: sweep_holds_once(db, batch_size=cfg.batch_size)),
        every("tier_refills", cfg.sweep_interval_seconds,
              lambda: refill_tiers_once(db, batch_size=cfg.batch_size)),
        every("subscription_renewals", cfg.sweep_interval_seconds,
              lambda: renew_subscriptions_once(db, batch_size=cfg.batch_size)),
        every("grant_expiry", cfg.sweep_interval_seconds,
              lambda: expire_grants_once(db, batch_size=cfg.batch_size)),
        every("expiring_notices", cfg.idempotency_cleanup_interval_seconds,
              lambda: announce_expiring_once(db, batch_size=cfg.batch_size)),
        every("usage_rollup", cfg.rollup_interval_seconds,
              lambda: close_usage_days_once(
                  db, grace=timedelta(seconds=cfg.rollup_grace_seconds))),
        every("idempotency_purge", cfg.idempotency_cleanup_interval_seconds,
              lambda: purge_idempotency_once(db, batch_size=cfg.batch_size)),
        every("payment_reconciliation", settings.payments.reconcile_interval_seconds,
              lambda: reconcile.reconcile_once(
                  db, settings, batch_size=cfg.batch_size, box=box)),
        every("event_retention", settings.events.prune_interval_seconds,
              lambda: prune_events_once(
                  db, retention_days=settings.events.retention_days,
                  batch_size=settings.events.prune_batch_size)),
    ]  # fmt: skip
    sender = Sender(settings.webhooks) if dispatch_webhooks else None  # one per process
    if sender is not None:
        dispatcher = Dispatcher(
            db, settings.webhooks, box, sender, max_backoff_seconds=cfg.max_backoff_seconds
        )
        jobs.append(dispatcher.run())
    tasks = [asyncio.create_task(j) for j in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if sender is not None:
            await sender.aclose()
