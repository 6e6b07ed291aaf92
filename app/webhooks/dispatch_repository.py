"""SQL of the webhook dispatcher: fan-out, claim, and recording what an attempt came to.

Raw asyncpg statements on the session's connection (``driver``), like the other hot paths:
each step is one or two round trips whatever the batch size (arrays in, ``unnest`` inside).
The rules (what a result means, when an endpoint is disabled) live in ``dispatcher.py``.

Lock order: delivery rows (sorted by key), then endpoint rows. Claims take delivery rows with
SKIP LOCKED, so they never wait for a lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import driver
from app.events.catalogue import SQL_MATCH

NIL = uuid.UUID(int=0)

# ---------------------------------------------------------------------------------------------
# Fan-out


@dataclass(frozen=True)
class FanoutStart:
    """The cursor (locked by this transaction) and how far fan-out may go now."""

    fanout_xid: int
    event_id: uuid.UUID
    # Every transaction with an id below this one has ended: no event with a smaller
    # fanout_xid can still appear.
    horizon: int
    any_enabled: bool  # is there an enabled endpoint at all (anywhere)


# The snapshot is taken before this statement's row lock gives the transaction an id, so the
# horizon is the oldest transaction running anywhere on the server (ours has none yet).
_LOCK_CURSOR = """
    SELECT c.fanout_xid, coalesce(c.event_id, $1::uuid) AS event_id,
           (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint AS horizon,
           EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) AS any_enabled
    FROM webhook_fanout_cursor c
    WHERE c.id = 1
    FOR UPDATE SKIP LOCKED
"""


async def lock_cursor(session: AsyncSession) -> FanoutStart | None:
    """The fan-out cursor, locked; None when another dispatcher is fanning out right now."""
    row = await driver(session).fetchrow(_LOCK_CURSOR, NIL)
    if row is None:
        return None
    return FanoutStart(row["fanout_xid"], row["event_id"], row["horizon"], row["any_enabled"])


@dataclass(frozen=True)
class FanoutRow:
    fanout_xid: int
    event_id: uuid.UUID
    project_id: uuid.UUID
    endpoint_id: uuid.UUID | None  # None: the event goes to no endpoint


# One row per (event, subscribed enabled endpoint of its project), and one with a NULL
# endpoint for an event nobody subscribed to, so the batch's last event is always known.
_BATCH = f"""
    WITH batch AS (
        SELECT e.project_id, e.id, e.type, e.fanout_xid
        FROM events e
        WHERE e.fanout_xid IS NOT NULL AND (e.fanout_xid, e.id) > ($1::bigint, $2::uuid)
          AND e.fanout_xid < $3::bigint
        ORDER BY e.fanout_xid, e.id
        LIMIT $4
    )
    SELECT b.fanout_xid, b.id AS event_id, b.project_id, w.id AS endpoint_id
    FROM batch b
    LEFT JOIN webhook_endpoints w
      ON w.project_id = b.project_id AND w.enabled
     AND EXISTS (SELECT 1 FROM unnest(w.event_types) AS s(p), (VALUES (b.type)) AS v(t)
                 WHERE {SQL_MATCH})
    ORDER BY b.fanout_xid, b.id
"""  # noqa: S608 - constant fragments; values are bind parameters


async def fanout_batch(session: AsyncSession, start: FanoutStart, *, limit: int) -> list[FanoutRow]:
    rows = await driver(session).fetch(
        _BATCH, start.fanout_xid, start.event_id, start.horizon, limit
    )
    return [
        FanoutRow(r["fanout_xid"], r["event_id"], r["project_id"], r["endpoint_id"]) for r in rows
    ]


# Each endpoint is locked FOR SHARE (in key order) and re-checked on the version it locked: a
# disable committed after the batch's snapshot is waited for, and its endpoint gets nothing.
_INSERT_DELIVERIES = """
    WITH d AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[])
            AS d(id, project_id, endpoint_id, event_id)
    ), w AS (
        SELECT w.project_id, w.id
        FROM webhook_endpoints w
        WHERE (w.project_id, w.id) IN (SELECT d.project_id, d.endpoint_id FROM d) AND w.enabled
        ORDER BY w.project_id, w.id
        FOR SHARE OF w
    )
    INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, status, next_attempt_at)
    SELECT d.id, d.project_id, d.endpoint_id, d.event_id, 'pending', now()
    FROM d JOIN w ON w.project_id = d.project_id AND w.id = d.endpoint_id
    ON CONFLICT DO NOTHING
"""


async def insert_deliveries(
    session: AsyncSession, rows: Sequence[tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]]
) -> int:
    """Insert pending deliveries (id, project_id, endpoint_id, event_id), due now; returns how
    many were new."""
    if not rows:
        return 0
    ids, projects, endpoints, events = (list(c) for c in zip(*rows, strict=True))
    status = await driver(session).execute(_INSERT_DELIVERIES, ids, projects, endpoints, events)
    return int(status.rsplit(" ", 1)[-1])


async def move_cursor(session: AsyncSession, fanout_xid: int, event_id: uuid.UUID | None) -> None:
    await driver(session).execute(
        "UPDATE webhook_fanout_cursor SET fanout_xid = $1, event_id = $2, updated_at = now()"
        " WHERE id = 1",
        fanout_xid,
        event_id,
    )


# ---------------------------------------------------------------------------------------------
# Claim


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this dispatcher, with everything one attempt needs."""

    project_id: uuid.UUID
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    attempt: int  # 1-based: this attempt's number (counted at claim)
    lease_token: uuid.UUID
    url: str
    secret_ciphertext: str
    previous_secret_ciphertext: str | None  # only while it still signs
    event_type: str
    created_at: datetime
    user_id: str | None
    sequence: int | None  # NULL for events written before migration 0008
    data_json: str


# Claimed per endpoint, never by scanning the whole due backlog: first the enabled endpoints
# with room here that have a due delivery (one probe each of the pending-by-endpoint index),
# the one waiting longest first, so no endpoint is always served before the others; then at
# most ``room`` due deliveries of each of them (the same index, in due order). Candidates are
# read without locks; only the chosen rows are locked (SKIP LOCKED: a row another dispatcher
# is claiming right now is left to it). The lease starts now.
_CLAIM = """
    WITH busy AS (
        SELECT * FROM unnest($1::uuid[], $2::int[]) AS b(endpoint_id, n)
    ), due AS MATERIALIZED (
        SELECT w.project_id, w.id, $4::int - coalesce(b.n, 0) AS room, o.first_due
        FROM webhook_endpoints w
        LEFT JOIN busy b ON b.endpoint_id = w.id
        CROSS JOIN LATERAL (
            SELECT d.next_attempt_at AS first_due
            FROM webhook_deliveries d
            WHERE d.project_id = w.project_id AND d.endpoint_id = w.id
              AND d.status = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at
            LIMIT 1
        ) o
        WHERE w.enabled AND w.id <> ALL($3::uuid[]) AND $4::int - coalesce(b.n, 0) > 0
        ORDER BY o.first_due
        LIMIT $5
    ), chosen AS (
        -- Due order; or, right after a claim that met another dispatcher's locks, a random
        -- pick of the same window, so that the two stop reaching for the same rows.
        SELECT c.project_id, c.id
        FROM due e CROSS JOIN LATERAL (
            SELECT d.project_id, d.id, d.next_attempt_at
            FROM webhook_deliveries d
            WHERE d.project_id = e.project_id AND d.endpoint_id = e.id
              AND d.status = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at
            LIMIT e.room
        ) c
        ORDER BY CASE WHEN $7::bool THEN random() END, c.next_attempt_at
        LIMIT $5
    ), locked AS (
        -- One primary-key lookup per chosen row, re-checked on the version it locked. The
        -- LIMIT keeps the check out of the lookup: with it, a planner misled by stale
        -- statistics would scan the partial due index once per chosen row instead.
        SELECT l.project_id, l.id
        FROM chosen c CROSS JOIN LATERAL (
            SELECT d.project_id, d.id, d.status, d.next_attempt_at
            FROM webhook_deliveries d
            WHERE d.project_id = c.project_id AND d.id = c.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ) l
        WHERE l.status = 'pending' AND l.next_attempt_at <= now()
    ), claimed AS (
        UPDATE webhook_deliveries d
        SET attempts = d.attempts + 1, lease_token = gen_random_uuid(),
            next_attempt_at = now() + make_interval(secs => $6), updated_at = now()
        FROM locked l
        WHERE d.project_id = l.project_id AND d.id = l.id
        RETURNING d.project_id, d.id, d.endpoint_id, d.event_id, d.attempts, d.lease_token
    )
    SELECT k.chosen, c.project_id, c.id, c.endpoint_id, c.event_id, c.attempts, c.lease_token,
           w.url, w.secret_ciphertext,
           CASE WHEN w.previous_secret_expires_at > now()
                THEN w.previous_secret_ciphertext END AS previous_secret_ciphertext,
           e.type, e.created_at, e.user_id, e.seq, e.data::text AS data_json
    FROM (SELECT count(*) AS chosen FROM chosen) k
    LEFT JOIN (claimed c
        JOIN events e ON e.project_id = c.project_id AND e.id = c.event_id
        JOIN webhook_endpoints w ON w.project_id = c.project_id AND w.id = c.endpoint_id
    ) ON true
"""


async def claim(
    session: AsyncSession,
    *,
    busy: dict[uuid.UUID, int],
    full: Sequence[uuid.UUID],
    per_endpoint: int,
    limit: int,
    scan: int = 0,  # unused: the claim no longer scans a window of the due backlog
    lease_seconds: float,
    shuffle: bool = False,
) -> tuple[list[Claimed], int]:
    """Lease up to ``limit`` due deliveries, at most ``per_endpoint`` minus ``busy[endpoint]``
    of one endpoint; returns them and how many were chosen (more than claimed: some were being
    claimed by another dispatcher at that moment)."""
    rows = await driver(session).fetch(
        _CLAIM,
        list(busy),
        list(busy.values()),
        list(full),
        per_endpoint,
        limit,
        lease_seconds,
        shuffle,
    )
    chosen = int(rows[0]["chosen"]) if rows else 0
    claimed = [
        Claimed(
            project_id=r["project_id"],
            delivery_id=r["id"],
            endpoint_id=r["endpoint_id"],
            event_id=r["event_id"],
            attempt=r["attempts"],
            lease_token=r["lease_token"],
            url=r["url"],
            secret_ciphertext=r["secret_ciphertext"],
            previous_secret_ciphertext=r["previous_secret_ciphertext"],
            event_type=r["type"],
            created_at=r["created_at"],
            user_id=r["user_id"],
            sequence=r["seq"],
            data_json=r["data_json"],
        )
        for r in rows
        if r["id"] is not None
    ]
    return claimed, chosen


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class DeliveryState:
    """A delivery row locked for recording a result, with its endpoint's failure state."""

    status: str
    lease_token: uuid.UUID | None
    enabled: bool
    failing_since: datetime | None
    # The endpoint's latest attempt recorded before this transaction (None: none, or its
    # failure run is not on): how long it has been quiet.
    last_attempt_at: datetime | None = None


# The deliveries first, by primary key (never through their endpoints: the planner would
# happily walk every delivery an endpoint ever had), then their endpoints' state.
_LOCK_DELIVERIES = """
    WITH d AS MATERIALIZED (
        SELECT d.project_id, d.id, d.endpoint_id, d.status, d.lease_token
        FROM unnest($1::uuid[], $2::uuid[]) AS k(project_id, id)
        JOIN webhook_deliveries d ON d.project_id = k.project_id AND d.id = k.id
        ORDER BY d.project_id, d.id
        FOR UPDATE OF d
    )
    SELECT d.project_id, d.id, d.status, d.lease_token, w.enabled, w.failing_since,
           last.created_at AS last_attempt_at, now() AS now
    FROM d JOIN webhook_endpoints w ON w.project_id = d.project_id AND w.id = d.endpoint_id
    LEFT JOIN LATERAL (
        -- Only while a failure run is on: its attempts since are all failures (a success ends
        -- it), so this is the run's latest failure. Ids are UUIDv7: newest first.
        SELECT a.created_at
        FROM webhook_attempts a
        WHERE a.project_id = w.project_id AND a.endpoint_id = w.id
          AND w.failing_since IS NOT NULL
        ORDER BY a.id DESC
        LIMIT 1
    ) last ON true
"""


async def lock_deliveries(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> tuple[dict[tuple[uuid.UUID, uuid.UUID], DeliveryState], datetime | None]:
    """Lock the deliveries (project_id, id) that still exist; returns them and the
    transaction's ``now()`` (None when none exists)."""
    projects, ids = [k[0] for k in keys], [k[1] for k in keys]
    rows = await driver(session).fetch(_LOCK_DELIVERIES, projects, ids)
    states = {
        (r["project_id"], r["id"]): DeliveryState(
            r["status"], r["lease_token"], r["enabled"], r["failing_since"], r["last_attempt_at"]
        )
        for r in rows
    }
    return states, (rows[0]["now"] if rows else None)


@dataclass(frozen=True)
class AttemptRow:
    id: uuid.UUID
    project_id: uuid.UUID
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    attempt: int
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None
    error: str | None
    succeeded: bool
    next_attempt_at: datetime | None
    created_at: datetime


# ON CONFLICT: recording the same result twice (a retry after a lost COMMIT reply) adds no row.
_INSERT_ATTEMPTS = """
    INSERT INTO webhook_attempts (id, project_id, delivery_id, endpoint_id, event_id, attempt,
        status_code, latency_ms, response_excerpt, error, succeeded, next_attempt_at, created_at)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::int[],
        $7::int[], $8::int[], $9::text[], $10::text[], $11::bool[], $12::timestamptz[],
        $13::timestamptz[])
    ON CONFLICT DO NOTHING
"""


async def insert_attempts(session: AsyncSession, rows: Sequence[AttemptRow]) -> None:
    if not rows:
        return
    fields = AttemptRow.__dataclass_fields__
    columns = [[getattr(r, f) for r in rows] for f in fields]
    await driver(session).execute(_INSERT_ATTEMPTS, *columns)


@dataclass(frozen=True)
class DeliveryUpdate:
    project_id: uuid.UUID
    delivery_id: uuid.UUID
    status: str  # pending (retry) | succeeded | failed
    next_attempt_at: datetime | None
    last_attempt_at: datetime
    last_status_code: int | None


_UPDATE_DELIVERIES = """
    UPDATE webhook_deliveries d
    SET status = u.status, next_attempt_at = u.next_attempt_at, lease_token = NULL,
        last_attempt_at = u.last_attempt_at, last_status_code = u.last_status_code,
        updated_at = now()
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                $6::int[]) AS u(project_id, id, status, next_attempt_at, last_attempt_at,
                                last_status_code)
    WHERE d.project_id = u.project_id AND d.id = u.id
"""


async def update_deliveries(session: AsyncSession, rows: Sequence[DeliveryUpdate]) -> None:
    if not rows:
        return
    columns = [[getattr(r, f) for r in rows] for f in DeliveryUpdate.__dataclass_fields__]
    await driver(session).execute(_UPDATE_DELIVERIES, *columns)


EndpointKey = tuple[uuid.UUID, uuid.UUID]  # (project_id, endpoint_id)

_CLEAR_FAILING = """
    UPDATE webhook_endpoints w SET failing_since = NULL, updated_at = now()
    FROM unnest($1::uuid[], $2::uuid[]) AS k(project_id, id)
    WHERE w.project_id = k.project_id AND w.id = k.id AND w.failing_since IS NOT NULL
"""
_START_FAILING = """
    UPDATE webhook_endpoints w SET failing_since = now(), updated_at = now()
    FROM unnest($1::uuid[], $2::uuid[]) AS k(project_id, id)
    WHERE w.project_id = k.project_id AND w.id = k.id AND w.failing_since IS NULL
"""
# A failure after a quiet spell starts a new run (see ``Dispatcher._plan``).
_RESTART_FAILING = """
    UPDATE webhook_endpoints w SET failing_since = now(), updated_at = now()
    FROM unnest($1::uuid[], $2::uuid[]) AS k(project_id, id)
    WHERE w.project_id = k.project_id AND w.id = k.id
"""


async def mark_endpoints(
    session: AsyncSession,
    *,
    succeeded: Sequence[EndpointKey],
    failed: Sequence[EndpointKey],
    restarted: Sequence[EndpointKey] = (),
) -> None:
    """A success ends an endpoint's run of failures; a failure starts one (if none is on);
    a failure after a quiet spell (``restarted``) starts a new one. The first two touch only
    rows that change, so the usual case (healthy endpoints) locks nothing."""
    conn = driver(session)
    for sql, keys in (
        (_CLEAR_FAILING, succeeded),
        (_START_FAILING, failed),
        (_RESTART_FAILING, restarted),
    ):
        if keys:
            await conn.execute(sql, [k[0] for k in keys], [k[1] for k in keys])


# Only the endpoint: its pending deliveries are canceled later, in bounded batches
# (``cancel_disabled``); the claim never takes a delivery of a disabled endpoint meanwhile.
_DISABLE = """
    UPDATE webhook_endpoints SET enabled = false, disabled_reason = $3, updated_at = now()
    WHERE project_id = $1 AND id = $2 AND enabled
    RETURNING failing_since
"""


async def disable_endpoint(session: AsyncSession, key: EndpointKey, *, reason: str) -> bool:
    """Disable an enabled endpoint; returns whether this call disabled it (False: it was
    disabled already). Its pending deliveries are left to ``cancel_disabled``."""
    row = await driver(session).fetchrow(_DISABLE, key[0], key[1], reason)
    return row is not None


# Pending deliveries of disabled endpoints, at most $1 of them, locked SKIP LOCKED (a row being
# recorded or claimed right now is left for the next batch), through the pending-by-endpoint
# index: one probe per disabled endpoint. The lease is dropped too, so the result of an attempt
# in flight is recorded as an attempt but no longer changes the delivery.
_CANCEL_DISABLED = """
    WITH doomed AS (
        SELECT x.project_id, x.id
        FROM webhook_endpoints w CROSS JOIN LATERAL (
            SELECT d.project_id, d.id
            FROM webhook_deliveries d
            WHERE d.project_id = w.project_id AND d.endpoint_id = w.id AND d.status = 'pending'
            LIMIT $1
            FOR UPDATE OF d SKIP LOCKED
        ) x
        WHERE NOT w.enabled
        LIMIT $1
    )
    UPDATE webhook_deliveries d
    SET status = 'canceled', next_attempt_at = NULL, lease_token = NULL, updated_at = now()
    FROM doomed
    WHERE d.project_id = doomed.project_id AND d.id = doomed.id AND d.status = 'pending'
"""


async def cancel_disabled(session: AsyncSession, *, limit: int) -> int:
    """Cancel at most ``limit`` pending deliveries of disabled endpoints; returns how many."""
    status = await driver(session).execute(_CANCEL_DISABLED, limit)
    return int(status.rsplit(" ", 1)[-1])
