"""The delivery queue's gauges, read from the database when /metrics is scraped.

``creditd_webhook_queue_depth`` counts pending deliveries (due or scheduled) and
``creditd_webhook_oldest_pending_age_seconds`` is now minus the oldest pending delivery's
``created_at`` (0 when none is pending). One statement reads both from at most
``DEPTH_CAP`` pending rows, so a scrape costs the same however long the queue grows: below
the cap both are exact; above it the depth reads ``DEPTH_CAP`` and the age is the oldest of
the rows read (a lower bound). A statement timeout bounds the scrape: when the database is
slow or away, the gauges keep their last values and /metrics still answers.
"""

from __future__ import annotations

import asyncio

import structlog

from app.db.session import Database, driver
from app.webhooks.metrics import OLDEST_PENDING_AGE, QUEUE_DEPTH

log = structlog.get_logger("creditd.metrics")

DEPTH_CAP = 1_000_000
TIMEOUT_SECONDS = 1.0

# $1: DEPTH_CAP.
QUEUE = """
SELECT count(*) AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age
FROM (SELECT created_at FROM webhook_deliveries WHERE status = 'pending' LIMIT $1) AS pending
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
    return True
