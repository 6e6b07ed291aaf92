"""The only writer of account rows, grants and ledger entries. Callers hold the account lock.

Every function here takes a ``LockedAccount`` (read ``FOR UPDATE`` in the caller's transaction),
changes it in memory, writes the row and exactly one ledger entry per change.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import uuid7
from app.core.money import ZERO
from app.credits import gate
from app.credits import repository as repo
from app.credits.exceptions import InsufficientCredits
from app.credits.repository import Change, LockedAccount
from app.credits.schemas import CreditIn, DebitIn, DebitOut, GrantCreated, GrantOut
from app.db import writes
from app.db.models import Grant
from app.db.writes import Write
from app.events import service as events

read_balance = repo.read_balance

PAID = "paid"
PROMOTIONAL = "promotional"
CATEGORIES = (PAID, PROMOTIONAL)


async def lock_for_user(
    session: AsyncSession, project_id: uuid.UUID, user_id: str
) -> LockedAccount | None:
    """Lock the user's account (None without such a user); on request paths the wait is
    bounded per account (``app/credits/gate.py``)."""
    with gate.waiting(session, project_id, user_id):
        return await repo.lock_for_user(session, project_id, user_id)


def team_gate_key(team_id: str) -> str:
    """The account gate's key for a team's account (a space never occurs in user ids)."""
    return f"team {team_id}"


async def lock_for_team(
    session: AsyncSession, project_id: uuid.UUID, team_id: str
) -> LockedAccount | None:
    """Lock the (live) team's account for a team-level change: no member recorded."""
    with gate.waiting(session, project_id, team_gate_key(team_id)):
        return await repo.lock_for_team(session, project_id, team_id)


async def create_account_for_team(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    team_id: str,
    name: str | None,
    metadata: dict[str, Any],
) -> bool:
    """Create a team with an empty account; False if the team id was ever used."""
    return await repo.insert_team(
        session,
        project_id=project_id,
        team_id=team_id,
        account_id=uuid7(),
        name=name,
        metadata=metadata,
    )


async def create_account_for_user(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    user_id: str,
    metadata: dict[str, Any] | None = None,
) -> bool:
    """Create a user with an empty account; False if the user id already exists."""
    return await repo.insert_user(
        session,
        project_id=project_id,
        user_id=user_id,
        account_id=uuid7(),
        metadata=metadata or {},
    )


def _moved(account: LockedAccount, change: Change) -> Change:
    """Apply ``change`` to the account's total and held; the change carrying the balance
    events it emits."""
    previous = account.available
    account.total += change.amount
    account.held += change.held_amount
    if account.available == previous:
        return change
    return replace(change, carry=[*change.carry, *balance_events(account, previous)])


async def _change(session: AsyncSession, account: LockedAccount, change: Change) -> int:
    """Apply one change to ``total``/``held`` (burning grants as needed) and ledger it; the
    ledger entry's id."""
    entry, account.debt = await repo.change(session, account, _moved(account, change))
    return entry


async def _change_unread(
    session: AsyncSession, account: LockedAccount, change: Change, *, last: bool
) -> None:
    """``_change`` for a caller that reads nothing back. ``last``: the request's last
    statement, sent with its COMMIT in one round trip (``account.debt`` is not read back)."""
    if last:
        await repo.change_at_commit(session, account, _moved(account, change))
    else:
        await _change(session, account, change)


def balance_events(account: LockedAccount, previous: Decimal) -> list[Write]:
    """The events a change of ``available`` from ``previous`` emits, as writes it carries.

    Each fires once per crossing, stateless (the change's own before and after decide):
    ``balance.low`` when available falls from >= a threshold to below it; ``balance.depleted``
    when it falls from > 0 to <= 0; ``balance.recovered`` when it rises from below a threshold
    to at or above it, or from <= 0 to > 0 (one event per change, listing the thresholds
    crossed). With the thresholds known (request paths) this is Python comparisons and no
    write at all without a crossing; without them the statement reads the project's.
    """
    current = account.available
    thresholds = account.thresholds
    found: list[Write] = []
    if current < previous:
        if previous > ZERO >= current:
            found.append(_balance_event(account, "balance.depleted", previous))
        if thresholds is None:
            found.append(repo.low_balance(account, previous))
        else:
            crossed = [t for t in thresholds if previous >= t > current]
            if crossed:
                found.append(_balance_event(account, "balance.low", previous, crossed))
    elif current > previous:
        if thresholds is None:
            found.append(repo.recovered(account, previous))
        else:
            crossed = [t for t in thresholds if previous < t <= current]
            if crossed or previous <= ZERO < current:
                found.append(_balance_event(account, "balance.recovered", previous, crossed))
    return found


def _balance_event(
    account: LockedAccount, type: str, previous: Decimal, crossed: list[Decimal] | None = None
) -> Write:
    data: dict[str, Any] = {"previous_balance": previous, "balance": account.available}
    if crossed is not None:
        data["thresholds"] = sorted(crossed, reverse=True)
    # A team's balance events are the team's (data.team_id), not the charging member's.
    user_id = None if account.team_id is not None else account.user_id
    return events.outbox(
        project_id=account.project_id, type=type, user_id=user_id, data={**data, **account.owner}
    )


async def grant(
    session: AsyncSession,
    account: LockedAccount,
    *,
    amount: Decimal,
    source: str,
    reason: str | None = None,
    expires_at: datetime | None = None,
    transaction_id: uuid.UUID | None = None,
    ledger_kind: str = "grant",
    category: str = PROMOTIONAL,
    payment_id: uuid.UUID | None = None,
    cost_amount: Decimal | None = None,
    cost_currency: str | None = None,
) -> tuple[Grant, int]:
    """Add a grant; it pays any debt first. Returns the grant and its ledger entry id.

    ``category``: ``paid`` (sold: purchases, subscription periods) or ``promotional`` (given
    away); paid grants burn last. ``cost_amount`` in ``cost_currency`` is what was paid for the
    whole ``amount`` (its cost basis); ``payment_id`` is unique per project (one grant per
    payment, by the database).
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown grant category {category!r}")
    if (cost_amount is None) != (cost_currency is None):
        raise ValueError("cost_amount and cost_currency go together")
    paid = min(account.debt, amount)
    grant_row = await repo.insert_grant(
        session,
        account,
        grant_id=uuid7(),
        amount=amount,
        remaining=amount - paid,
        source=source,
        reason=reason,
        expires_at=expires_at,
        transaction_id=transaction_id,
        category=category,
        payment_id=payment_id,
        cost_amount=cost_amount,
        cost_currency=cost_currency,
    )
    entry = await _change(
        session,
        account,
        Change(
            kind=ledger_kind,
            amount=amount,
            debt_delta=-paid,
            grant_id=grant_row.id,
            transaction_id=transaction_id,
            reason=reason,
        ),
    )
    return grant_row, entry


async def debit(
    session: AsyncSession, account: LockedAccount, *, amount: Decimal, reason: str | None
) -> int:
    """Remove credits the user has available; more than available → 402."""
    if amount > account.available:
        raise InsufficientCredits(
            f"Debit of {amount} exceeds the available balance of {account.available}."
        )
    return await _change(
        session,
        account,
        Change(
            kind="debit",
            amount=-amount,
            burn=amount,
            debt_delta=amount,
            reason=reason,
        ),
    )


async def grant_by_api(
    session: AsyncSession, account: LockedAccount, body: CreditIn
) -> GrantCreated:
    """``POST …/credits`` of a user or a team: the grant and its ``credits.granted`` event (a
    team's carries ``team_id`` and no user)."""
    grant_row, entry = await grant(
        session,
        account,
        amount=body.amount,
        source=body.source,
        reason=body.reason,
        expires_at=body.expires_at,
        category=body.category,
    )
    await events.record(
        session,
        project_id=account.project_id,
        type="credits.granted",
        user_id=account.user_id,
        data={
            "grant_id": str(grant_row.id),
            "amount": body.amount,
            "source": body.source,
            "category": body.category,
            "ledger_entry_id": entry,
            "balance": account.available,
            **account.owner,
        },
    )
    return GrantCreated(
        **GrantOut.model_validate(grant_row).model_dump(), balance=account.available
    )


async def debit_by_api(session: AsyncSession, account: LockedAccount, body: DebitIn) -> DebitOut:
    """``POST …/debits`` of a user or a team: the debit and its ``credits.debited`` event."""
    entry = await debit(session, account, amount=body.amount, reason=body.reason)
    await events.record(
        session,
        project_id=account.project_id,
        type="credits.debited",
        user_id=account.user_id,
        data={
            "amount": body.amount,
            "ledger_entry_id": entry,
            "balance": account.available,
            **account.owner,
        },
    )
    return DebitOut(ledger_entry_id=entry, amount=body.amount, balance=account.available)


async def hold(
    session: AsyncSession,
    account: LockedAccount,
    *,
    amount: Decimal,
    transaction_id: uuid.UUID,
    carry: Sequence[Write] = (),
    last: bool = False,
) -> None:
    """Reserve ``amount`` for a started transaction (admission was checked by the caller).

    ``carry``: the caller's writes, performed in the same statement (always performed).
    ``last``: the request's last statement, sent with its COMMIT (one round trip for both).
    """
    if not amount:
        await writes.run(session, carry, at_commit=last)
        return
    change = Change(kind="hold", held_amount=amount, transaction_id=transaction_id, carry=carry)
    await _change_unread(session, account, change, last=last)


async def settle(
    session: AsyncSession,
    account: LockedAccount,
    *,
    release: Decimal,
    charge: Decimal,
    transaction_id: uuid.UUID,
    kind: str,
    reason: str | None = None,
    carry: Sequence[Write] = (),
    last: bool = False,
) -> None:
    """Release a hold and charge usage in one ledger entry (either may be zero).

    The charge is never clamped: usage already happened, so it may create debt.
    ``carry``: the caller's writes, performed in the same statement (always performed).
    ``last``: the request's last statement, sent with its COMMIT (one round trip for both).
    """
    if not (release or charge):
        await writes.run(session, carry, at_commit=last)
        return
    change = Change(
        kind=kind,
        amount=-charge,
        held_amount=-release,
        burn=charge,
        debt_delta=charge,
        transaction_id=transaction_id,
        reason=reason,
        carry=carry,
    )
    await _change_unread(session, account, change, last=last)


async def remove_from_grant(
    session: AsyncSession,
    account: LockedAccount,
    *,
    grant_id: uuid.UUID,
    amount: Decimal,
    kind: str,
    reason: str | None = None,
    close: bool = True,
    carry: Sequence[Write] = (),
) -> int:
    """Remove ``amount`` (at most what it has left) from one grant: expiry, tier reset,
    rollover cap. With ``close`` the grant is marked expired. One ledger entry, even for 0."""
    return await _change(
        session,
        account,
        Change(
            kind=kind,
            amount=-amount,
            grant_id=grant_id,
            reason=reason,
            carry=[repo.take_from_grant(grant_id, amount, close=close), *carry],
        ),
    )


async def clawback(
    session: AsyncSession,
    account: LockedAccount,
    *,
    grant_id: uuid.UUID,
    amount: Decimal,
    reason: str | None,
    carry: Sequence[Write] = (),
) -> Decimal:
    """Take ``amount`` back from what one grant gave (a refund, a lost dispute): as much as
    the grant still has, the rest as debt, so ``total`` drops by ``amount`` and may go
    negative. Other grants are never touched. One ``clawback`` ledger entry; returns how much
    came out of the grant."""
    if amount <= ZERO:
        raise ValueError("a clawback takes a positive amount")
    state = await _grant_state(session, account, grant_id)
    taken = min(amount, state.remaining)
    await _change(
        session,
        account,
        Change(
            kind="clawback",
            amount=-amount,
            debt_delta=amount - taken,
            grant_id=grant_id,
            reason=reason,
            carry=[repo.take_from_grant(grant_id, taken, close=False), *carry],
        ),
    )
    return taken


async def restore(
    session: AsyncSession,
    account: LockedAccount,
    *,
    grant_id: uuid.UUID,
    amount: Decimal,
    reason: str | None,
    carry: Sequence[Write] = (),
) -> Decimal:
    """Give back ``amount`` of a clawback (a won dispute, reinstated funds): it pays debt
    first, like a grant, and the rest returns to that grant, never above its ``amount``.
    One ``clawback_reversal`` ledger entry; returns the credits given back (``amount``
    unless the grant had no room left, which a caller restoring at most what it clawed back
    never meets)."""
    if amount <= ZERO:
        raise ValueError("a restore gives back a positive amount")
    state = await _grant_state(session, account, grant_id)
    paid = min(account.debt, amount)
    back = min(amount - paid, state.amount - state.remaining)
    await _change(
        session,
        account,
        Change(
            kind="clawback_reversal",
            amount=paid + back,
            debt_delta=-paid,
            grant_id=grant_id,
            reason=reason,
            carry=[repo.give_to_grant(grant_id, back), *carry],
        ),
    )
    return paid + back


async def _grant_state(
    session: AsyncSession, account: LockedAccount, grant_id: uuid.UUID
) -> repo.GrantState:
    state = await repo.grant_state(session, account, grant_id)
    if state is None:  # a caller's bug: the grant of a payment always belongs to its user
        raise LookupError(f"grant {grant_id} is not one of this account's grants")
    return state


@dataclass(frozen=True)
class Expired:
    project_id: uuid.UUID
    user_id: str | None
    grant_id: uuid.UUID
    amount: Decimal
    expires_at: datetime


async def expire_due(
    session: AsyncSession, *, now: datetime, limit: int, dry_run: bool = False
) -> list[Expired]:
    """Remove the unspent remainder of grants past ``expires_at`` (never more, never below 0),
    one ledger entry (even of 0) and one ``credits.expired`` event per grant.

    Accounts are locked with SKIP LOCKED (busy ones wait for the next run), then their due
    grants are read under that lock, so the remainders are current. With ``dry_run`` nothing
    changes: the result says what would expire.
    """
    expired: list[Expired] = []
    for row in await repo.accounts_with_due_grants(session, now, limit):
        account = await repo.try_lock_by_id(
            session, row["project_id"], row["account_id"], row["user_id"], row["team_id"]
        )
        if account is None:
            continue
        for grant_row in await repo.due_grants(session, account.id, now):
            item = Expired(
                account.project_id,
                account.user_id,
                grant_row["id"],
                grant_row["remaining"],
                grant_row["expires_at"],
            )
            expired.append(item)
            if dry_run:
                continue
            await remove_from_grant(
                session,
                account,
                grant_id=item.grant_id,
                amount=item.amount,
                kind="expiry",
                reason="expired",
                carry=[
                    events.outbox(
                        project_id=account.project_id,
                        type="credits.expired",
                        user_id=account.user_id,
                        data={
                            "grant_id": item.grant_id,
                            "amount": item.amount,
                            "expires_at": item.expires_at,
                            "balance": account.available - item.amount,
                            **account.owner,
                        },
                    )
                ],
            )
    return expired


async def announce_expiring(session: AsyncSession, *, now: datetime, days: int, limit: int) -> int:
    """One ``credits.expiring`` event per grant with credits left that expires within ``days``."""
    rows = await repo.mark_expiring_soon(session, now + timedelta(days=days), limit)
    for row in rows:
        await events.record(
            session,
            project_id=row["project_id"],
            type="credits.expiring",
            user_id=row["user_id"] if row["team_id"] is None else None,
            data={"grant_id": row["id"], "remaining": row["remaining"],
                  "expires_at": row["expires_at"],
                  **({} if row["team_id"] is None else {"team_id": row["team_id"]})},
        )  # fmt: skip
    return len(rows)


async def close(session: AsyncSession, account: LockedAccount) -> None:
    """Close the (locked) account of a deleted user: every later lock attempt skips it, also
    one already waiting for this lock (PostgreSQL re-checks ``closed_at`` after the wait)."""
    await repo.close(session, account)


try_lock_by_id = repo.try_lock_by_id
live_grants = repo.live_grants
list_grants = repo.list_grants
list_ledger = repo.list_ledger
list_team_grants = repo.list_team_grants
list_team_ledger = repo.list_team_ledger
