"""Event retention: delete events older than ``events.retention_days`` that nothing needs.

An event is kept past its retention while fan-out has not passed it (the dispatcher still has
to read it) or while one of its deliveries is pending (a sender still has to render it). Its
finished deliveries and their attempts go with it: ON DELETE CASCADE on both foreign keys,
each served by an index (``uq_webhook_deliveries_project_id``,
``ix_webhook_attempts_project_id_delivery_id``). Attempts are not pruned on their own: an
event kept for a pending delivery keeps its attempts until it goes, and those are few (the
retry schedule bounds them, and a pending delivery ends within days: it succeeds, runs out of
attempts, or its endpoint is disabled and it is canceled).

The work runs per project, in batches of one short transaction each, walking the primary key
``(project_id, id)`` upwards from the oldest id: UUIDv7 ids are time-ordered, so "older than
the cutoff" is the key range ``id < uuid7_floor(cutoff)``. Each batch is a window of at most
``batch_size`` old events, so its cost and the time its row locks are held stay bounded
however many old events are kept, and the next batch starts after the window.

A batch is two statements in one transaction:

1. ``WINDOW`` locks the window's deletable events ``FOR UPDATE SKIP LOCKED``: a row somebody
   holds is left for the next run. A redelivery should take ``FOR KEY SHARE`` on its event
   before it makes a delivery pending: then either the batch skips that event, or the
   redelivery waits for the batch and finds the event gone;
2. ``DELETE`` deletes those, checking again for a pending delivery on a snapshot taken after
   the locks, so a delivery made pending between the two statements (by a writer that did
   not lock the event) keeps its event rather than being deleted by the cascade.

The DELETE finds the rows by ``ctid``, which cannot change in between: this transaction holds
their row locks (no UPDATE, DELETE or VACUUM FULL can move them). bench/prune_events.py
measured it against finding them by primary key (``id = ANY(...)``: on PostgreSQL 15 one
index descent per id): 3 to 12% less time per batch, batch by batch in turn on the same data
(bench/RESULTS.md, "Event retention on 10 M events"); the cascades dominate either way. The
key columns stay in its WHERE as a guard. (Should ``events`` be distributed, say on Citus,
the key form is the portable one: bench/prune_events.py has it as ``PK_DELETE``.)

A batch that times out (its lock_timeout, or the statement timeout: a cascade larger than the
database can delete in time) is taken again at half the size, down to ``MIN_BATCH``; when even
that fails, the project is left for the next run. A project's failure never stops the others:
the run logs it, goes on to the next project, and fails at the end (the job counts the failure
and backs off), so one project with a row held for hours cannot keep every project after it
from being pruned. Only a fault that means the database itself is away (unreachable, no pooled
connection, a broken connection) ends the run at once.

The SQL is here rather than in a repository: it is this job's alone, and a test EXPLAINs it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from app.core.clock import utcnow
from app.core.ids import uuid7_floor
from app.db.exceptions import (
    DatabaseFault,
    DeadlockDetected,
    LockTimeout,
    SerializationFailure,
    StatementTimeout,
)
from app.db.session import Database, driver

log = structlog.get_logger("creditd.retention")

NIL = uuid.UUID(int=0)  # below every id: where a project's walk starts
# A batch never waits long on a lock (the cascade may meet a delivery row being updated):
# it fails, the job backs off, and the next run takes the batch again. No JIT: the window's
# estimated cost crosses jit_above_cost on a large table, and compiling took half of its
# 60 ms on 10 M events (bench/RESULTS.md) for a statement that reads 5,000 rows.
BATCH_SETTINGS = "SET LOCAL lock_timeout = '5s'; SET LOCAL jit = off"

# The next window of project $1's events after $2 and before the bound $3 (at most $4, in key
# order: an index-only range scan), and in it, locked, the events that may go: fanned out
# already (or never meant for fan-out, fanout_xid NULL) and with no pending delivery. "Fanned
# out" is strictly before the cursor (fanout_xid, event_id), which fan-out moves to the last
# event it handled. The pending check is one hashed subquery over the window's range of
# delivery keys (the unique index's range, or the pending partial index while few are
# pending), so its cost does not grow with the project's delivery backlog.
WINDOW = """
WITH win AS MATERIALIZED (
    SELECT id FROM events
    WHERE project_id = $1 AND id > $2 AND id < $3
    ORDER BY id
    LIMIT $4
), edge AS MATERIALIZED (
    SELECT (SELECT id FROM win ORDER BY id DESC LIMIT 1) AS window_end,
           (SELECT count(*) FROM win) AS scanned
), doomed AS (
    SELECT e.ctid FROM events e
    WHERE e.project_id = $1 AND e.id > $2 AND e.id <= (SELECT window_end FROM edge)
      AND (e.fanout_xid IS NULL
           OR (e.fanout_xid, e.id) < (SELECT c.fanout_xid, c.event_id
                                      FROM webhook_fanout_cursor c WHERE c.id = 1))
      AND e.id NOT IN (SELECT d.event_id FROM webhook_deliveries d
                       WHERE d.project_id = $1 AND d.event_id > $2
                         AND d.event_id <= (SELECT window_end FROM edge) AND d.status = 'pending')
    FOR UPDATE OF e SKIP LOCKED
)
SELECT window_end, scanned, ARRAY(SELECT ctid FROM doomed) AS locked FROM edge
"""

# $4: the ctids of the rows WINDOW locked, all in the window ($2, $3] of project $1; the
# pending check again, on this statement's newer snapshot.
DELETE = """
DELETE FROM events e
WHERE e.ctid = ANY($4::tid[]) AND e.project_id = $1 AND e.id > $2 AND e.id <= $3
  AND e.id NOT IN (SELECT d.event_id FROM webhook_deliveries d
                   WHERE d.project_id = $1 AND d.event_id > $2 AND d.event_id <= $3
                     AND d.status = 'pending')
"""

PROJECTS = "SELECT id FROM projects ORDER BY id"

# A batch that timed out is taken again at half the size, down to this (or the configured size,
# if smaller); a timeout at the floor leaves the project for the next run.
MIN_BATCH = 100
# Faults of one project's batch (its rows, its locks, its cascade): the run goes on to the next
# project. Any other DatabaseFault means the database is away and ends the run.
PROJECT_FAULTS = (LockTimeout, StatementTimeout, DeadlockDetected, SerializationFailure)


@dataclass(frozen=True)
class PruneBatch:
    """One batch: events looked at, deleted (or deletable, in a dry run), and its duration
    from BEGIN to COMMIT (the longest any of its row locks was held)."""

    project_id: uuid.UUID
    scanned: int
    deleted: int
    seconds: float


def cutoff_id(now: datetime, retention_days: int) -> uuid.UUID:
    """Events with an id below this were made more than ``retention_days`` before ``now``."""
    return uuid7_floor(now - timedelta(days=retention_days))


async def prune_project(
    db: Database,
    project_id: uuid.UUID,
    *,
    bound: uuid.UUID,
    batch_size: int,
    dry_run: bool = False,
    on_batch: Callable[[PruneBatch], None] | None = None,
) -> tuple[int, int]:
    """Delete one project's deletable events below ``bound``, batch by batch; returns
    (deleted, kept) where kept counts the old events left (still needed, or locked)."""
    after, deleted, scanned = NIL, 0, 0
    floor = min(MIN_BATCH, batch_size)
    while True:
        began = time.perf_counter()
        try:
            async with db.transaction() as session:
                conn = driver(session)
                await conn.execute(BATCH_SETTINGS)
                row = await conn.fetchrow(WINDOW, project_id, after, bound, batch_size)
                assert row is not None  # one row always, with a NULL window_end when done
                locked: list[tuple[int, int]] = row["locked"]  # ctids
                if row["window_end"] is None:
                    return deleted, scanned - deleted
                if locked and not dry_run:
                    end = row["window_end"]
                    status: str = await conn.execute(DELETE, project_id, after, end, locked)
                    count = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
                else:
                    count = len(locked)
        except (LockTimeout, StatementTimeout) as exc:
            if batch_size <= floor:
                raise
            # A smaller window holds fewer locks and cascades less: it may fit in time, or
            # end before the row somebody holds, so the project gets that far this run.
            batch_size = max(batch_size // 2, floor)
            log.warning(
                "events_prune_batch_shrunk",
                project_id=str(project_id),
                code=exc.slug,
                batch_size=batch_size,
            )
            continue
        batch = PruneBatch(project_id, row["scanned"], count, time.perf_counter() - began)
        log.debug(
            "events_prune_batch",
            project_id=str(project_id),
            scanned=batch.scanned,
            deleted=count,
            ms=round(batch.seconds * 1000, 1),
        )
        if on_batch is not None:
            on_batch(batch)
        after = row["window_end"]
        deleted += count
        scanned += batch.scanned


async def prune_events_once(
    db: Database,
    *,
    retention_days: int,
    batch_size: int,
    now: datetime | None = None,
    dry_run: bool = False,
    on_batch: Callable[[PruneBatch], None] | None = None,
) -> int:
    """Delete every project's events past retention that nothing needs any more; returns how
    many were deleted (with ``dry_run``, how many would be, and nothing is deleted)."""
    bound = cutoff_id(now if now is not None else utcnow(), retention_days)
    async with db.transaction() as session:
        projects: list[uuid.UUID] = [r["id"] for r in await driver(session).fetch(PROJECTS)]
    total = 0
    failed: list[DatabaseFault] = []
    for project_id in projects:
        began = time.perf_counter()
        try:
            deleted, kept = await prune_project(
                db,
                project_id,
                bound=bound,
                batch_size=batch_size,
                dry_run=dry_run,
                on_batch=on_batch,
            )
        except PROJECT_FAULTS as exc:
            # What it deleted before the fault is committed; the rest waits for the next run,
            # and the projects after it are not held up.
            failed.append(exc)
            log.warning("events_prune_project_failed", project_id=str(project_id), code=exc.slug)
            continue
        if deleted or kept:
            log.info(
                "events_pruned",
                project_id=str(project_id),
                deleted=deleted,
                kept=kept,  # old but still needed (not fanned out, delivery pending) or busy
                dry_run=dry_run,
                seconds=round(time.perf_counter() - began, 3),
            )
        total += deleted
    if failed:
        log.warning(
            "events_prune_incomplete",
            failed_projects=len(failed),
            projects=len(projects),
            deleted=total,
            dry_run=dry_run,
        )
        raise failed[0]  # the job counts a failure and backs off
    return total
