from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import literals as lit
from app.db import session as session_db
from app.db.models import IdempotencyKey
from app.idempotency.exceptions import IdempotencyKeyInFlight

# The hot path speaks to asyncpg directly (one prepared statement per call, no ORM). The
# scope is a project id or OPERATOR_SCOPE, which is no project: the tenant helper does not
# apply, every statement names (project_id, key), the primary key.
#
# A keyed request writes its key's row once, in the common case: its transaction opens (with
# BEGIN, one round trip) by locking the key and looking for its row; with no row, the
# handler runs and the whole row is inserted with COMMIT. Only when a row exists (a retry, or
# an expired key) does the request go on to the claim below, in the same transaction.

# The lock: a transaction-scoped advisory lock on the key, in the one-bigint key space, hashed
# from "<scope uuid>:<key>". The other one-key locks hash "payment-ref:..." and
# "webhook-endpoints:..." (app/payments, app/webhooks), texts no uuid begins with, so only a
# 64-bit hash collision (with one of those, or between two keys) could make two locks meet,
# at the cost of a wait or a spurious 409; the two-int4 locks (user limits, the rollup) are a
# key space of their own. A concurrent request with the same key waits for the lock only
# 100 ms, as for the claim's row below: then lock_not_available, the 409
# idempotency_key_in_flight. The request's own lock_timeout is read first and restored by the
# final SELECT (evaluated once the lock is held), so the handler's statements keep it.
_LOCK = """
WITH prev AS MATERIALIZED (SELECT current_setting('lock_timeout') AS lock_timeout),
nowait AS MATERIALIZED (SELECT set_config('lock_timeout', '100ms', true) FROM prev),
locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 0)) FROM nowait
)
SELECT set_config('lock_timeout', prev.lock_timeout, true) FROM prev, locked
"""
# Whether the key has a row (live or expired). A statement of its own, sent after the lock in
# the same simple query: under READ COMMITTED it takes its snapshot once the lock is held, so
# it sees the row committed by the request that held the lock before.
_EXISTS = "SELECT 1 FROM idempotency_keys WHERE project_id = $1 AND key = $2"
# The response of a request that found no row, stored with its COMMIT. No ON CONFLICT: a row
# written meanwhile by someone who does not take the lock (a business error or a read stored
# by ``claim``, or a replica still on the claim-first release) makes it fail with a unique
# violation, which rolls the whole request back (``duplicate``): it then runs again, and
# finds that row.
_INSERT = """
INSERT INTO idempotency_keys
    (project_id, key, method, path, request_hash, status_code, headers, body, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, now() + $9::interval)
"""

# The claim, for a key that has a row, and for storing a finished response in one statement.
# It inserts the key's row as "in flight" (status 0, uncommitted: nobody else sees it) or
# takes over an expired row. A concurrent writer with the same key waits on our uncommitted
# row (PostgreSQL's unique check waits for the inserting transaction to end) or on the row
# lock of a replaced expired one, but only for 100 ms (a lock_timeout of 0 would mean
# forever): then it fails with lock_not_available, the 409 idempotency_key_in_flight. (Not
# less: the insert may also wait a moment for the table's extension lock, and at 1 ms a busy
# server turned such waits into 409s for requests that had no duplicate.) The request's own
# lock_timeout is read first and restored by the RETURNING (evaluated after the insert), so
# the handler's statements keep it. With a live row there is nothing to return: the caller
# reads it.
_CLAIM = """
WITH prev AS MATERIALIZED (SELECT current_setting('lock_timeout') AS lock_timeout),
nowait AS MATERIALIZED (SELECT set_config('lock_timeout', '100ms', true) FROM prev)
INSERT INTO idempotency_keys AS k
    (project_id, key, method, path, request_hash, status_code, headers, body, expires_at)
SELECT $1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, now() + $9::interval FROM nowait
ON CONFLICT (project_id, key) DO UPDATE SET
    method = excluded.method, path = excluded.path, request_hash = excluded.request_hash,
    status_code = excluded.status_code, headers = excluded.headers, body = excluded.body,
    expires_at = excluded.expires_at, created_at = now()
WHERE k.expires_at <= now()
RETURNING (SELECT set_config('lock_timeout', lock_timeout, true) FROM prev)
"""
IN_FLIGHT = 0  # status_code of a claimed row whose response is not stored yet
_STORE = """
UPDATE idempotency_keys SET status_code = $3, headers = $4::text::jsonb, body = $5
WHERE project_id = $1 AND key = $2
"""
_RELEASE = "DELETE FROM idempotency_keys WHERE project_id = $1 AND key = $2"
_GET_LIVE = """
SELECT request_hash, status_code, headers::text AS headers, body FROM idempotency_keys
WHERE project_id = $1 AND key = $2 AND expires_at > now()
"""


# The statements that ride along with BEGIN and with COMMIT, prepared on every connection
# (app/db/session.py): no round trip of their own.
_LOCK_PREPARED = session_db.prepared("creditd_key_lock", "uuid, text", _LOCK)
_EXISTS_PREPARED = session_db.prepared("creditd_key_exists", "uuid, text", _EXISTS)
_INSERT_PREPARED = session_db.prepared(
    "creditd_key_insert",
    "uuid, text, text, text, text, integer, text, bytea, interval",
    _INSERT,
)
_STORE_PREPARED = session_db.prepared("creditd_store", "uuid, text, integer, text, bytea", _STORE)
_FOUND = "SELECT 1"  # the look-up's status tag when the key has a row
# The primary key (named by app/db/base.py's convention): its unique violation at COMMIT
# means the key's row was written meanwhile.
_PRIMARY_KEY = "pk_idempotency_keys"


def key_opening(*, project_id: uuid.UUID, key: str) -> session_db.Opening:
    """The lock on ``key`` and the look-up of its row, as the statements opening the request's
    transaction (with BEGIN, one round trip); ``found(session)`` then says whether it has a
    row. Another transaction holding the lock past 100 ms: ``IdempotencyKeyInFlight``."""
    args = f"{lit.uuid_(project_id)}, {lit.text(key)}"
    return session_db.Opening(
        f"EXECUTE {_LOCK_PREPARED}({args}); EXECUTE {_EXISTS_PREPARED}({args})", _in_flight
    )


def _in_flight(exc: Exception) -> Exception | None:
    return IdempotencyKeyInFlight() if isinstance(exc, asyncpg.LockNotAvailableError) else None


def found(session: AsyncSession) -> bool:
    """Whether the key of the transaction's opening has a row (live or expired)."""
    return session_db.opened(session) == _FOUND


def insert_with_commit(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    ttl: timedelta,
    status_code: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Insert the key's row with the response in COMMIT's round trip (stored exactly when the
    transaction commits); a row written meanwhile fails the COMMIT (``duplicate``)."""
    args = (
        lit.uuid_(project_id),
        lit.text(key),
        lit.text(method),
        lit.text(path),
        lit.text(request_hash),
        lit.integer(status_code),
        lit.text(orjson.dumps(headers).decode()),
        lit.bytea(body),
        lit.interval(ttl),
    )
    session_db.commit_with(session, f"EXECUTE {_INSERT_PREPARED}({', '.join(args)})")


def duplicate(exc: BaseException) -> bool:
    """Whether ``exc`` is ``insert_with_commit``'s row meeting one written meanwhile (the
    transaction was rolled back)."""
    return (
        isinstance(exc, asyncpg.UniqueViolationError)
        and exc.table_name == "idempotency_keys"
        and exc.constraint_name == _PRIMARY_KEY
    )


def store_with_commit(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    key: str,
    status_code: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Write the response into the claimed row in COMMIT's round trip (stored exactly when
    the transaction commits)."""
    args = (
        lit.uuid_(project_id),
        lit.text(key),
        lit.integer(status_code),
        lit.text(orjson.dumps(headers).decode()),
        lit.bytea(body),
    )
    session_db.commit_with(session, f"EXECUTE {_STORE_PREPARED}({', '.join(args)})")


@dataclass(frozen=True)
class Stored:
    """A stored first response."""

    request_hash: str
    status_code: int
    headers: dict[str, str]
    body: bytes


async def claim(
    conn: asyncpg.Connection,
    *,
    project_id: uuid.UUID,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    ttl: timedelta,
    status_code: int = IN_FLIGHT,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bool:
    """Claim ``key`` for this transaction (or store a finished response right away).

    True when claimed; False when a live row holds the key (read it with ``get_live``).
    Raises ``IdempotencyKeyInFlight`` when another transaction holds the key past 100 ms.
    """
    try:
        row = await conn.fetchrow(
            _CLAIM,
            project_id,
            key,
            method,
            path,
            request_hash,
            status_code,
            orjson.dumps(headers or {}).decode(),
            body,
            ttl,
        )
    except asyncpg.LockNotAvailableError:
        raise IdempotencyKeyInFlight() from None
    return row is not None


async def release(conn: asyncpg.Connection, *, project_id: uuid.UUID, key: str) -> None:
    """Drop this transaction's claim (its response is not to be kept)."""
    await conn.execute(_RELEASE, project_id, key)


async def get_live(conn: asyncpg.Connection, project_id: uuid.UUID, key: str) -> Stored | None:
    """The committed, unexpired response stored under ``key``."""
    row = await conn.fetchrow(_GET_LIVE, project_id, key)
    if row is None:
        return None
    return Stored(
        request_hash=row["request_hash"],
        status_code=row["status_code"],
        headers=orjson.loads(row["headers"]),
        body=bytes(row["body"]),
    )


async def purge_expired(session: AsyncSession, *, limit: int) -> int:
    victims = (
        select(IdempotencyKey.project_id, IdempotencyKey.key)
        .where(IdempotencyKey.expires_at <= func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(IdempotencyKey).where(
            func.row(IdempotencyKey.project_id, IdempotencyKey.key).in_(victims.scalar_subquery())
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
