"""All SQL that touches accounts, grants and the ledger. Only the credits service calls it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.core.ids import uuid7
from app.db import writes
from app.db.models import Grant, LedgerEntry
from app.db.scoping import scoped_select
from app.db.session import driver
from app.db.writes import Write


@dataclass
class LockedAccount:
    """An account row read ``FOR UPDATE``: valid until the transaction ends."""

    id: uuid.UUID
    project_id: uuid.UUID
    # The user whose account this is; on a team's account the member charging it (recorded on
    # its ledger entries), None for team-level changes (grants, debits, expiry).
    user_id: str | None
    total: Decimal
    held: Decimal
    debt: Decimal
    # The project's low_balance_thresholds when the caller knows them (request paths, from the
    # cached settings): the balance events are then decided in Python and cost nothing without
    # a crossing. None (workers): a change that may cross one carries the SQL deciding it.
    thresholds: Sequence[Decimal] | None = None
    team_id: str | None = None  # set when the account is a team's

    @property
    def owner(self) -> dict[str, str]:
        """``{"team_id": ...}`` for a team's account (merged into its events' data), else {}."""
        return {} if self.team_id is None else {"team_id": self.team_id}

    @property
    def available(self) -> Decimal:
        return self.total - self.held

    @property
    def grant_balance(self) -> Decimal:
        return self.total + self.debt


# Hot-path statements run on the raw driver (see app/db/session.py): a few round trips each,
# no statement construction per call.
_LOCK_FOR_USER = """
    SELECT a.id, a.total, a.held, a.debt
    FROM users u JOIN accounts a ON a.id = u.account_id
    WHERE u.project_id = $1 AND u.id = $2 AND u.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a
"""
_LOCK_FOR_TEAM = """
    SELECT a.id, a.total, a.held, a.debt
    FROM teams t JOIN accounts a ON a.id = t.account_id
    WHERE t.project_id = $1 AND t.id = $2 AND t.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a
"""
_BALANCE = """
    SELECT a.total, a.held
    FROM users u JOIN accounts a ON a.id = u.account_id
    WHERE u.project_id = $1 AND u.id = $2 AND u.deleted_at IS NULL
"""
# One statement per balance change: burn ``$burn`` from the grants (soonest expiry first, no
# expiry last, then promotional before paid, then oldest), write the account, append the
# ledger entry. Whatever the grants could not cover becomes debt ($12 = credits to burn,
# $13 = debt increase before burning). The entry's created_at is the clock as the row is
# built (the column's default too, spelled out so the ledger export's horizon does not depend
# on migration 0012 having run): the transaction holds an xid by then (the account row is
# locked FOR UPDATE first), which the export's horizon waits for (app/ledger/repository.py).
_CHANGE = """
    WITH ordered AS (
        SELECT id, remaining,
               sum(remaining) OVER (ORDER BY expires_at ASC NULLS LAST, (category = 'paid'),
                                    created_at, id) AS running
        FROM grants
        WHERE account_id = $1 AND remaining > 0 AND $12::numeric > 0
    ), take AS (
        SELECT id, LEAST(remaining, $12::numeric - (running - remaining)) AS used
        FROM ordered WHERE running - remaining < $12::numeric
    ), burned AS (
        UPDATE grants AS g SET remaining = g.remaining - take.used
        FROM take WHERE g.id = take.id
        RETURNING take.used
    ), acc AS (
        UPDATE accounts
        SET total = $3, held = $4, updated_at = now(),
            debt = debt + $13::numeric - (SELECT coalesce(sum(used), 0) FROM burned)
        WHERE id = $1
        RETURNING debt
    )
    INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                total_after, held_after, transaction_id, grant_id, reason,
                                team_id, created_at)
    VALUES ($2, $1, $5, $6, $7, $8, $3, $4, $9, $10, $11, $14, clock_timestamp())
    RETURNING id, (SELECT debt FROM acc) AS debt
"""


async def lock_for_user(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> LockedAccount | None:
    row = await driver(session).fetchrow(_LOCK_FOR_USER, project_id, user_id)
    if row is None:
        return None
    return LockedAccount(row["id"], project_id, user_id, row["total"], row["held"], row["debt"])


async def lock_for_team(
    session: AsyncSession, project_id: uuid.UUID, team_id: str
) -> LockedAccount | None:
    row = await driver(session).fetchrow(_LOCK_FOR_TEAM, project_id, team_id)
    if row is None:
        return None
    return LockedAccount(
        row["id"], project_id, None, row["total"], row["held"], row["debt"], team_id=team_id
    )


_TRY_LOCK_BY_ID = """
    SELECT total, held, debt FROM accounts
    WHERE id = $1 AND project_id = $2 AND closed_at IS NULL
    FOR UPDATE SKIP LOCKED
"""
_LIVE_GRANTS = """
    SELECT id, remaining, expires_at FROM grants
    WHERE account_id = $1 AND source = $2 AND remaining > 0 AND expired_at IS NULL
    ORDER BY created_at, id
"""
# Take an exact amount from one grant (expiry, tier reset); the account change carries it.
_TAKE_FROM_GRANT = """
    UPDATE grants SET remaining = remaining - $2,
                      expired_at = CASE WHEN $3 THEN now() ELSE expired_at END
    WHERE id = $1
"""


async def try_lock_by_id(
    session: AsyncSession,
    project_id: uuid.UUID,
    account_id: uuid.UUID,
    user_id: str | None,
    team_id: str | None = None,
) -> LockedAccount | None:
    """Lock the account unless another transaction holds it (workers retry later)."""
    row = await driver(session).fetchrow(_TRY_LOCK_BY_ID, account_id, project_id)
    if row is None:
        return None
    return LockedAccount(
        account_id,
        project_id,
        user_id,
        row["total"],
        row["held"],
        row["debt"],
        team_id=team_id,
    )


async def live_grants(session: AsyncSession, account_id: uuid.UUID, source: str) -> list[Any]:
    """Unexpired grants of ``source`` with credits left, oldest first (caller holds the lock)."""
    return list(await driver(session).fetch(_LIVE_GRANTS, account_id, source))


# The balance events of a change whose caller does not know the project's thresholds; see
# ``app.credits.service.balance_events`` for the rules. balance.low: available fell from >= a
# threshold to below it.
_LOW_BALANCE = """
    INSERT INTO events (id, project_id, type, user_id, data)
    SELECT $1, $2, 'balance.low', $3,
           jsonb_build_object('thresholds', jsonb_agg(t.v ORDER BY t.v DESC),
                              'previous_balance', $4::numeric, 'balance', $5::numeric)
           || CASE WHEN $6::text IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('team_id', $6::text) END
    FROM projects p, jsonb_array_elements_text(p.settings -> 'low_balance_thresholds') AS x(v),
         LATERAL (SELECT x.v::numeric AS v) AS t
    WHERE p.id = $2 AND $4::numeric >= t.v AND $5::numeric < t.v
    HAVING count(*) > 0
"""


# balance.recovered: available rose from below a threshold to at or above it, or from <= 0
# to > 0 (one event for the change, listing the thresholds it crossed, possibly none).
_RECOVERED = """
    INSERT INTO events (id, project_id, type, user_id, data)
    SELECT $1, $2, 'balance.recovered', $3,
           jsonb_build_object('thresholds', coalesce(jsonb_agg(t.v ORDER BY t.v DESC), '[]'),
                              'previous_balance', $4::numeric, 'balance', $5::numeric)
           || CASE WHEN $6::text IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('team_id', $6::text) END
    FROM (SELECT x.v::numeric AS v
          FROM projects p, jsonb_array_elements_text(p.settings -> 'low_balance_thresholds') AS x(v)
          WHERE p.id = $2) AS t
    WHERE $4::numeric < t.v AND $5::numeric >= t.v
    HAVING count(*) > 0 OR ($4::numeric <= 0 AND $5::numeric > 0)
"""


def low_balance(account: LockedAccount, previous: Decimal) -> Write:
    """Carried by a change that lowers ``available``: emits balance.low on a crossing of one
    of the project's thresholds (read in the statement)."""
    return Write(_LOW_BALANCE, _balance_args(account, previous))


def recovered(account: LockedAccount, previous: Decimal) -> Write:
    """Carried by a change that raises ``available``: emits balance.recovered on an upward
    crossing of one of the project's thresholds (read in the statement) or of zero."""
    return Write(_RECOVERED, _balance_args(account, previous))


def _balance_args(account: LockedAccount, previous: Decimal) -> tuple[Any, ...]:
    # A team's balance events are the team's, not the member's whose charge crossed a line.
    user_id = None if account.team_id is not None else account.user_id
    return (uuid7(), account.project_id, user_id, previous, account.available, account.team_id)


_DUE_ACCOUNTS = """
    SELECT DISTINCT g.project_id, g.account_id,
           CASE WHEN g.team_id IS NULL THEN g.user_id END AS user_id, g.team_id
    FROM grants g JOIN accounts a ON a.id = g.account_id
    WHERE g.expires_at <= $1 AND g.expired_at IS NULL AND a.closed_at IS NULL
    LIMIT $2
"""
_DUE_GRANTS = """
    SELECT id, remaining, expires_at FROM grants
    WHERE account_id = $1 AND expires_at <= $2 AND expired_at IS NULL
    ORDER BY expires_at, id
"""
_EXPIRING_SOON = """
    UPDATE grants SET expiry_notified_at = now()
    WHERE id IN (SELECT id FROM grants
                 WHERE expires_at <= $1 AND expired_at IS NULL AND expiry_notified_at IS NULL
                   AND remaining > 0
                 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING id, project_id, user_id, team_id, remaining, expires_at
"""


async def accounts_with_due_grants(session: AsyncSession, now: datetime, limit: int) -> list[Any]:
    """Accounts holding grants past ``expires_at`` (read without locks; lock each next)."""
    return list(await driver(session).fetch(_DUE_ACCOUNTS, now, limit))


async def due_grants(session: AsyncSession, account_id: uuid.UUID, now: datetime) -> list[Any]:
    """The account's grants due to expire (call with the account locked: values are current)."""
    return list(await driver(session).fetch(_DUE_GRANTS, account_id, now))


async def mark_expiring_soon(session: AsyncSession, horizon: datetime, limit: int) -> list[Any]:
    """Claim grants expiring before ``horizon`` that were not announced yet."""
    return list(await driver(session).fetch(_EXPIRING_SOON, horizon, limit))


async def close(session: AsyncSession, account: LockedAccount) -> None:
    await driver(session).execute(
        "UPDATE accounts SET closed_at = now(), updated_at = now() WHERE id = $1", account.id
    )


def take_from_grant(grant_id: uuid.UUID, amount: Decimal, *, close: bool) -> Write:
    return Write(_TAKE_FROM_GRANT, (grant_id, amount, close))


@dataclass(frozen=True)
class GrantState:
    amount: Decimal
    remaining: Decimal
    expired: bool  # the expiry worker already removed its remainder


_GRANT_STATE = """
    SELECT amount, remaining, expired_at IS NOT NULL AS expired FROM grants
    WHERE id = $1 AND account_id = $2
"""
# Credits given back to one grant (a reversed clawback). A grant the expiry worker had closed
# is reopened, so the worker takes the returned credits out again if it is past its expiry.
_GIVE_TO_GRANT = """
    UPDATE grants SET remaining = remaining + $2,
                      expired_at = CASE WHEN $2 > 0 THEN NULL ELSE expired_at END
    WHERE id = $1
"""


async def grant_state(
    session: AsyncSession, account: LockedAccount, grant_id: uuid.UUID
) -> GrantState | None:
    """One grant of the (locked) account: current, since only its lock holder changes it."""
    row = await driver(session).fetchrow(_GRANT_STATE, grant_id, account.id)
    return None if row is None else GrantState(row["amount"], row["remaining"], row["expired"])


def give_to_grant(grant_id: uuid.UUID, amount: Decimal) -> Write:
    return Write(_GIVE_TO_GRANT, (grant_id, amount))


async def read_balance(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> tuple[Decimal, Decimal] | None:
    """(total, held) without a lock, for side-effect-free reads such as /v1/check."""
    row = await driver(session).fetchrow(_BALANCE, project_id, user_id)
    return None if row is None else (row["total"], row["held"])


async def insert_user(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    user_id: str,
    account_id: uuid.UUID,
    metadata: dict[str, Any],
) -> bool:
    """Insert a user and its account; False if the id exists (even concurrently inserted)."""
    inserted = await driver(session).fetchval(
        "INSERT INTO users (project_id, id, account_id, metadata) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
        project_id,
        user_id,
        account_id,
        render_json(metadata).decode(),
    )
    if inserted is None:
        return False
    await driver(session).execute(
        "INSERT INTO accounts (id, project_id) VALUES ($1, $2)", account_id, project_id
    )
    return True


async def insert_team(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    team_id: str,
    account_id: uuid.UUID,
    name: str | None,
    metadata: dict[str, Any],
) -> bool:
    """Insert a team and its account; False if the id exists (even concurrently inserted)."""
    conn = driver(session)
    await conn.execute(
        "INSERT INTO accounts (id, project_id) VALUES ($1, $2)", account_id, project_id
    )
    inserted = await conn.fetchval(
        "INSERT INTO teams (project_id, id, account_id, name, metadata) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
        project_id,
        team_id,
        account_id,
        name,
        render_json(metadata).decode(),
    )
    if inserted is None:
        await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
        return False
    return True


@dataclass(frozen=True)
class Change:
    """One change of an account's total/held, ledgered; ``carry``: writes made in the same
    statement."""

    kind: str
    amount: Decimal = Decimal(0)
    held_amount: Decimal = Decimal(0)
    burn: Decimal = Decimal(0)
    debt_delta: Decimal = Decimal(0)
    transaction_id: uuid.UUID | None = None
    grant_id: uuid.UUID | None = None
    reason: str | None = None
    carry: Sequence[Write] = ()


# The same change sent with COMMIT returns nothing (nobody reads it; the data-modifying WITH
# items run all the same, referenced or not).
_CHANGE_AT_COMMIT = _CHANGE[: _CHANGE.rindex("RETURNING")]


def _change_statement(
    account: LockedAccount, change: Change, sql: str = _CHANGE
) -> tuple[str, list[Any]]:
    args = (
        account.id,
        account.project_id,
        account.total,
        account.held,
        account.user_id,
        change.kind,
        change.amount,
        change.held_amount,
        change.transaction_id,
        change.grant_id,
        change.reason,
        change.burn,
        change.debt_delta,
        account.team_id,
    )
    return writes.compose(sql, args, change.carry)


async def change(
    session: AsyncSession, account: LockedAccount, change: Change
) -> tuple[int, Decimal]:
    """Write ``account``'s new total/held and one ledger entry (plus the carried writes, in
    the same statement); returns (entry id, new debt)."""
    sql, params = _change_statement(account, change)
    row = await driver(session).fetchrow(sql, *params)
    return int(row["id"]), row["debt"]


async def change_at_commit(session: AsyncSession, account: LockedAccount, change: Change) -> None:
    """The same statement sent with COMMIT, in its round trip: for a request's last change,
    whose entry id and debt nobody reads (``writes.run_at_commit``)."""
    sql, params = _change_statement(account, change, _CHANGE_AT_COMMIT)
    await writes.run_at_commit(session, sql, params)


async def insert_grant(
    session: AsyncSession,
    account: LockedAccount,
    *,
    grant_id: uuid.UUID,
    amount: Decimal,
    remaining: Decimal,
    source: str,
    reason: str | None,
    expires_at: datetime | None,
    transaction_id: uuid.UUID | None,
    category: str,
    payment_id: uuid.UUID | None,
    cost_amount: Decimal | None,
    cost_currency: str | None,
) -> Grant:
    stmt = (
        insert(Grant)
        .values(
            id=grant_id,
            project_id=account.project_id,
            account_id=account.id,
            user_id=account.user_id,
            team_id=account.team_id,
            amount=amount,
            remaining=remaining,
            source=source,
            reason=reason,
            expires_at=expires_at,
            transaction_id=transaction_id,
            category=category,
            payment_id=payment_id,
            cost_amount=cost_amount,
            cost_currency=cost_currency,
        )
        .returning(Grant)
    )
    return (await session.execute(stmt)).scalar_one()


async def list_grants(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Grant]:
    # A user's own grants: refunds of their team charges (which name them) are the team's.
    stmt = scoped_select(Grant, project_id).where(Grant.user_id == user_id, Grant.team_id.is_(None))
    if after is not None:
        stmt = stmt.where(Grant.id > after)
    stmt = stmt.order_by(Grant.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def list_ledger(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, *, limit: int, after: int | None
) -> list[LedgerEntry]:
    # The user's own account only: entries of team accounts name the member who charged them.
    stmt = scoped_select(LedgerEntry, project_id).where(
        LedgerEntry.user_id == user_id, LedgerEntry.team_id.is_(None)
    )
    if after is not None:
        stmt = stmt.where(LedgerEntry.id > after)
    stmt = stmt.order_by(LedgerEntry.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def list_team_grants(
    session: AsyncSession,
    project_id: uuid.UUID,
    team_id: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Grant]:
    stmt = scoped_select(Grant, project_id).where(Grant.team_id == team_id)
    if after is not None:
        stmt = stmt.where(Grant.id > after)
    stmt = stmt.order_by(Grant.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def list_team_ledger(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, *, limit: int, after: int | None
) -> list[LedgerEntry]:
    stmt = scoped_select(LedgerEntry, project_id).where(LedgerEntry.team_id == team_id)
    if after is not None:
        stmt = stmt.where(LedgerEntry.id > after)
    stmt = stmt.order_by(LedgerEntry.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())
