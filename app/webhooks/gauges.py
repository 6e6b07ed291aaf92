"""The delivery queue's gauges, read from the database when /metrics is scraped.

- ``creditd_webhook_queue_depth`` counts pending deliveries (due or scheduled), from at most
  ``DEPTH_CAP`` rows, so a scrape costs the same however long the queue grows: above the cap it
  reads ``DEPTH_CAP``.
- ``creditd_webhook_oldest_pending_age_seconds`` is how long the most overdue delivery has been
  due: now minus the smallest ``next_attempt_at`` that is not in the future (0 when nothing is
  due). A delivery waiting hours for its next retry is not late; one due and not taken is (the
  dispatchers are behind, or none runs). A delivery being sent has its ``next_attempt_at`` at
  its lease's end, so it is not due either. One descent of the due index.
- ``creditd_webhook_fanout_lag_seconds`` is now minus the ``created_at`` of the next event fan-out
  has to pass: the first after the cursor ``(fanout_xid, event_id)`` in the order of
  ``ix_events_fanout_xid_id`` (0 when there is none). Deliveries exist only once fan-out has
  made them, so a stalled fan-out (a long write transaction anywhere on the server holds its
  horizon back, or no dispatcher runs) leaves the two gauges above at 0; this one grows. One
  descent of that index.

One statement reads all three. A statement timeout bounds the scrape: when the database is slow
or away, the gauges keep their last values and /metrics still answers.
"""

from __future__ import annotations

import asyncio

import structlog

from app.db.session import Database, driver
from app.webhooks.metrics import FANOUT_LAG, OLDEST_PENDING_AGE, QUEUE_DEPTH

log = structlog.get_logger("creditd.metrics")

DEPTH_CAP = 1_000_000
TIMEOUT_SECONDS = 1.0

# $1: DEPTH_CAP. The cursor's event_id is NULL until fan-out has passed an event: the nil UUID,
# below every id, as the dispatcher reads it.
QUEUE = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries
                              WHERE status = 'pending' LIMIT $1) AS pending) AS depth,
       coalesce(extract(epoch FROM now() - (
           SELECT min(d.next_attempt_at) FROM webhook_deliveries d
           WHERE d.status = 'pending' AND d.next_attempt_at <= now())), 0)::float8 AS oldest_age,
       coalesce(extract(epoch FROM now() - (
           -- LATERAL: the cursor's values bound the index scan (a join would filter instead,
           -- reading every event fan-out has passed that retention has not pruned yet).
           SELECT n.created_at FROM webhook_fanout_cursor c CROSS JOIN LATERAL (
               SELECT e.created_at FROM events e
               WHERE e.fanout_xid IS NOT NULL
                 AND (e.fanout_xid, e.id)
                     > (c.fanout_xid, coalesce(c.event_id, '00000000-0000-0000-0000-000000000000'))
               ORDER BY e.fanout_xid, e.id
               LIMIT 1) AS n
           WHERE c.id = 1)), 0)::float8 AS fanout_lag
"""


async def refresh(db: Database, *, seconds: float | None = None) -> bool:
    """Set the queue gauges from the database; False (gauges untouched) when it could not
    answer within ``seconds`` (default ``TIMEOUT_SECONDS``) or failed."""
    seconds = TIMEOUT_SECONDS if seconds is None else seconds
    try:
        # The server stops the statement; the client-side bound also covers waiting for a
        # pooled connection or for a database that does not answer at all.
        async with asyncio.timeout(seconds + 1.0):
            async with db.transaction() as session:
                conn = driver(session)
                await conn.execute(f"SET LOCAL statement_timeout = {int(seconds * 1000)}")
                row = await conn.fetchrow(QUEUE, DEPTH_CAP)
    except Exception as exc:  # the rest of /metrics must still be served
        log.warning("webhook_gauges_unavailable", error=type(exc).__name__)
        return False
    assert row is not None  # an aggregate: always one row
    QUEUE_DEPTH.set(row["depth"])
    OLDEST_PENDING_AGE.set(max(row["oldest_age"], 0.0))
    FANOUT_LAG.set(max(row["fanout_lag"], 0.0))
    return True
