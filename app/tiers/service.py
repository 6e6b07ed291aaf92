"""Tiers: how users get credits (allocation, refills) and may spend them (overage, pricing,
concurrency). Assignment and refills grant through the credits service; the ``allocations``
primary key guarantees one grant per user and period."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.money import ZERO
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db.models import Plan, Tier, User
from app.db.scoping import scoped_delete, scoped_select, scoped_update
from app.db.session import driver
from app.events import service as events
from app.tiers.exceptions import InvalidRollover, TierExists, TierInUse, TierNotFound
from app.tiers.periods import current_period
from app.tiers.schemas import TierCreate, TierOut, TierPatch
from app.users.exceptions import UserNotFound

_INSERT_ALLOCATION = """
    INSERT INTO allocations (project_id, user_id, source, source_ref, period_start)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1
"""


def to_out(tier: Tier) -> TierOut:
    return TierOut.model_validate(tier, from_attributes=True)


def _check(values: dict[str, Any]) -> None:
    cap, amount = values.get("rollover_cap"), values.get("credits") or ZERO
    if cap is not None and cap < amount:
        raise InvalidRollover()


async def _clear_default(session: AsyncSession, project_id: uuid.UUID) -> None:
    await session.execute(
        scoped_update(Tier, project_id).where(Tier.is_default).values(is_default=False)
    )


async def create(session: AsyncSession, project_id: uuid.UUID, body: TierCreate) -> Tier:
    values = body.model_dump(exclude_unset=True, exclude_none=True)
    values["model_overrides"] = {
        k: v.model_dump(exclude_none=True) for k, v in (body.model_overrides or {}).items()
    }
    _check(values)
    if values.get("is_default"):
        await _clear_default(session, project_id)
    stmt = insert(Tier).values(project_id=project_id, **values).on_conflict_do_nothing()
    tier = (await session.execute(stmt.returning(Tier))).scalar_one_or_none()
    if tier is None:
        raise TierExists()
    return tier


async def get(session: AsyncSession, project_id: uuid.UUID, tier_id: str) -> Tier:
    tier = (
        await session.execute(scoped_select(Tier, project_id).where(Tier.id == tier_id))
    ).scalar_one_or_none()
    if tier is None:
        raise TierNotFound()
    return tier


async def list_tiers(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Tier]:
    stmt = scoped_select(Tier, project_id)
    if after is not None:
        stmt = stmt.where(Tier.id > after)
    return list((await session.execute(stmt.order_by(Tier.id).limit(limit + 1))).scalars())


async def patch(
    session: AsyncSession, project_id: uuid.UUID, tier_id: str, body: TierPatch
) -> Tier:
    tier = await get(session, project_id, tier_id)
    values = body.model_dump(exclude_unset=True)
    if "model_overrides" in values:
        values["model_overrides"] = {
            k: v.model_dump(exclude_none=True) for k, v in (body.model_overrides or {}).items()
        }
    for required in ("name", "credits", "refill_interval", "refill_mode", "allow_overage",
                     "price_multiplier", "features", "is_default"):  # fmt: skip
        if required in values and values[required] is None:
            values.pop(required)
    _check({"credits": tier.credits, "rollover_cap": tier.rollover_cap, **values})
    if values.get("is_default"):
        await _clear_default(session, project_id)
    if values:
        await session.execute(
            scoped_update(Tier, project_id)
            .where(Tier.id == tier_id)
            .values(**values, updated_at=func.now())
        )
    return await refresh(session, project_id, tier_id)


async def refresh(session: AsyncSession, project_id: uuid.UUID, tier_id: str) -> Tier:
    stmt = (
        scoped_select(Tier, project_id)
        .where(Tier.id == tier_id)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def delete(session: AsyncSession, project_id: uuid.UUID, tier_id: str) -> None:
    await get(session, project_id, tier_id)
    users = select(User.id).where(
        User.project_id == project_id, User.tier_id == tier_id, User.deleted_at.is_(None)
    )
    plans = select(Plan.id).where(Plan.project_id == project_id, Plan.tier_id == tier_id)
    if (await session.execute(users.limit(1))).first() or (
        await session.execute(plans.limit(1))
    ).first():
        raise TierInUse()
    try:
        await session.execute(scoped_delete(Tier, project_id).where(Tier.id == tier_id))
    except IntegrityError:  # pragma: no cover - no foreign keys point at tiers today
        raise TierInUse() from None


async def default_tier_id(session: AsyncSession, project_id: uuid.UUID) -> str | None:
    found = await driver(session).fetchval(
        "SELECT id FROM tiers WHERE project_id = $1 AND is_default", project_id
    )
    return None if found is None else str(found)


async def _claim_period(
    session: AsyncSession, account: LockedAccount, tier: Tier, period_start: datetime
) -> bool:
    """Record the period's allocation; False if it already was (then nothing may change)."""
    inserted = await driver(session).fetchval(
        _INSERT_ALLOCATION, account.project_id, account.user_id, "tier", tier.id, period_start
    )
    return inserted is not None


async def _allocate(
    session: AsyncSession,
    account: LockedAccount,
    tier: Tier,
    *,
    period_start: datetime,
    period_end: datetime | None,
    reason: str,
) -> None:
    """Grant the tier's allocation for a period whose allocation was just claimed."""
    if tier.credits > 0:
        # reset mode: the allocation expires with its period, so it is spent first and its
        # remainder leaves at the period end (by the refill, or the expiry job if first).
        expires = period_end if tier.refill_mode == "reset" else None
        grant, entry = await credits.grant(
            session, account, amount=tier.credits, source="tier", reason=reason, expires_at=expires
        )
        await driver(session).execute(
            "UPDATE allocations SET grant_id = $6 WHERE project_id = $1 AND user_id = $2 "
            "AND source = $3 AND source_ref = $4 AND period_start = $5",
            account.project_id, account.user_id, "tier", tier.id, period_start, grant.id,
        )  # fmt: skip
        await events.record(
            session,
            project_id=account.project_id,
            type="credits.granted",
            user_id=account.user_id,
            data={"grant_id": grant.id, "amount": tier.credits, "source": "tier",
                  "category": grant.category, "ledger_entry_id": entry, "tier_id": tier.id,
                  "balance": account.available},
        )  # fmt: skip


async def _remove_tier_allocation(
    session: AsyncSession, account: LockedAccount, *, keep: Any = ZERO, kind: str
) -> None:
    """Remove what is left of the user's tier allocations, keeping at most ``keep``."""
    grants = await credits.live_grants(session, account.id, "tier")
    excess = sum((g["remaining"] for g in grants), ZERO) - keep
    for g in grants:  # oldest first
        if excess <= 0:
            break
        take = min(g["remaining"], excess)
        await credits.remove_from_grant(
            session,
            account,
            grant_id=g["id"],
            amount=take,
            kind=kind,
            reason="tier allocation",
            close=take == g["remaining"],
        )
        excess -= take


async def assign(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    tier_id: str,
    *,
    reset_balance: bool = False,
    account: LockedAccount | None = None,
) -> None:
    """Move a user to a tier: anchor its refills now and grant the first allocation.

    ``reset_balance`` first removes what is left of earlier tier allocations (only those).
    """
    tier = await get(session, project_id, tier_id)
    if account is None:
        account = await credits.lock_for_user(session, project_id, user_id)
        if account is None:
            raise UserNotFound()
    now = utcnow()
    if reset_balance:
        await _remove_tier_allocation(session, account, kind="tier_reset")
    period_end = None
    if tier.refill_interval != "none":
        _, period_end = current_period(now, tier.refill_interval, now)
    await session.execute(
        scoped_update(User, project_id)
        .where(User.id == user_id)
        .values(tier_id=tier_id, tier_assigned_at=now, next_refill_at=period_end,
                updated_at=func.now())
    )  # fmt: skip
    if await _claim_period(session, account, tier, now):
        await _allocate(
            session,
            account,
            tier,
            period_start=now,
            period_end=period_end,
            reason=f"tier {tier.id}",
        )
    await events.record(
        session,
        project_id=project_id,
        type="user.tier_changed",
        user_id=user_id,
        data={"tier_id": tier_id, "reset_balance": reset_balance, "balance": account.available},
    )


_DUE = """
    SELECT project_id, id, account_id, tier_id, tier_assigned_at
    FROM users
    WHERE next_refill_at <= $1 AND deleted_at IS NULL
    ORDER BY next_refill_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
"""


async def refill_due(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Grant the current period's allocation to users whose refill is due.

    Safe with several workers (SKIP LOCKED on users and accounts) and after a crash (the batch
    is one transaction; the allocations key refuses a second grant for a period). After
    downtime a user gets one allocation, for the current period, not one per missed period.
    Returns how many users were refilled.
    """
    done = 0
    for row in await driver(session).fetch(_DUE, now, limit):
        account = await credits.try_lock_by_id(
            session, row["project_id"], row["account_id"], row["id"]
        )
        if account is None:
            continue  # busy: it stays due and is picked up on the next run
        tier = (
            await session.execute(
                scoped_select(Tier, row["project_id"]).where(Tier.id == row["tier_id"])
            )
        ).scalar_one_or_none()
        if tier is None or tier.refill_interval == "none" or row["tier_assigned_at"] is None:
            await _set_next_refill(session, row, None)
            continue
        start, end = current_period(row["tier_assigned_at"], tier.refill_interval, now)
        await _set_next_refill(session, row, end)
        if not await _claim_period(session, account, tier, start):
            continue  # this period was already granted
        if tier.refill_mode == "reset":
            await _remove_tier_allocation(session, account, kind="tier_reset")
        else:
            cap = tier.rollover_cap
            if cap is not None:
                await _remove_tier_allocation(
                    session, account, keep=max(ZERO, cap - tier.credits), kind="rollover_cap"
                )
        await _allocate(
            session,
            account,
            tier,
            period_start=start,
            period_end=end,
            reason=f"tier {tier.id} refill",
        )
        done += 1
    return done


async def _set_next_refill(session: AsyncSession, row: Any, when: datetime | None) -> None:
    await session.execute(
        update(User)
        .where(User.project_id == row["project_id"], User.id == row["id"])
        .values(next_refill_at=when)
    )
