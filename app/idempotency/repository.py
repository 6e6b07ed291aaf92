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

# The claim: the first statement of a keyed request. It inserts the key's row as "in flight"
# (status 0, uncommitted: nobody else sees it) or takes over an expired row. A concurrent
# request with the same key waits on our uncommitted row (PostgreSQL's unique check waits
# for the inserting transaction to end) or on the row lock of a replaced expired one, but
# only for 100 ms (a lock_timeout of 0 would mean forever): then it fails with
# lock_not_available, the 409 idempotency_key_in_flight. (Not less: the insert may also wait
# a moment for the table's extension lock, and at 1 ms a busy server turned such waits into
# 409s for requests that had no duplicate.) The request's own lock_timeout is
# read first and restored by the RETURNING (evaluated after the insert), so the handler's
# statements keep it. With a live row there is nothing to return: the caller reads it.
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


# The same claim and store, prepared on every connection (app/db/session.py) for the common
# path, where they ride along with BEGIN and with COMMIT: no round trip of their own.
_CLAIM_PREPARED = session_db.prepared(
    "creditd_claim",
    "uuid, text, text, text, text, integer, text, bytea, interval",
    _CLAIM,
)
_STORE_PREPARED = session_db.prepared("creditd_store", "uuid, text, integer, text, bytea", _STORE)
_CLAIMED = "INSERT 0 1"  # the claim's status tag when it inserted (or took over) the row


def claim_opening(
    *,
    project_id: uuid.UUID,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    ttl: timedelta,
) -> session_db.Opening:
    """The claim as the statement opening the request's transaction (with BEGIN, one round
    trip); ``claimed(session)`` then says whether it claimed the key."""
    args = (
        lit.uuid_(project_id),
        lit.text(key),
        lit.text(method),
        lit.text(path),
        lit.text(request_hash),
        lit.integer(IN_FLIGHT),
        lit.text("{}"),
        lit.bytea(b""),
        lit.interval(ttl),
    )
    return session_db.Opening(f"EXECUTE {_CLAIM_PREPARED}({', '.join(args)})", _in_flight)


def _in_flight(exc: Exception) -> Exception | None:
    return IdempotencyKeyInFlight() if isinstance(exc, asyncpg.LockNotAvailableError) else None


def claimed(session: AsyncSession) -> bool:
    """Whether the transaction's opening claim took the key (else a live row holds it)."""
    return session_db.opened(session) == _CLAIMED


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


async def store(
    conn: asyncpg.Connection,
    *,
    project_id: uuid.UUID,
    key: str,
    status_code: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Write the response into the row this transaction claimed."""
    await conn.execute(_STORE, project_id, key, status_code, orjson.dumps(headers).decode(), body)


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
