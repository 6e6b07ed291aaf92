"""Plans and subscriptions.

A subscription belongs to a provider that drives it. ``manual`` is driven by creditd itself:
the first period starts at subscription, and the renewal worker starts each next one. Stripe and
Razorpay will drive theirs from webhooks (a later issue) through the same two steps used here:
``_grant_period`` (one grant per subscription and period, guaranteed by the ``allocations``
primary key) and ``_end`` (status, ``ended_at``, the user's tier restored).

Decisions (also in the OpenAPI descriptions):
- A user holds at most one subscription that has not ended (``ended_at IS NULL``); this is
  checked under the user's account lock, which every subscription creation takes first.
- Subscription credits do not expire and are kept when the subscription is canceled or ends.
- A plan with a tier moves the user to it (``tiers.assign``, which grants that tier's own
  allocation). The tier the user was on is remembered in the subscription's metadata; when the
  subscription ends the user goes back to it (or, if it no longer exists, to the project's
  default tier, or to no tier) — unless the user was moved to another tier meanwhile.
- Periods are anchored at the first period start (``metadata.period_anchor``); after downtime
  the worker grants one period, the current one, not one per missed period.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.ids import uuid7
from app.core.money import ZERO
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db.models import Plan, Subscription, User
from app.db.scoping import scoped_columns, scoped_delete, scoped_select, scoped_update
from app.db.session import driver
from app.events import service as events
from app.plans.exceptions import (
    PlanExists,
    PlanInactive,
    PlanInUse,
    PlanNotFound,
    ProviderNotConfigured,
    SubscriptionExists,
    SubscriptionNotFound,
)
from app.plans.schemas import (
    PlanCreate,
    PlanOut,
    PlanPatch,
    PriceOut,
    SubscriptionCreate,
    SubscriptionOut,
)
from app.tiers import service as tiers
from app.tiers.exceptions import TierNotFound
from app.tiers.periods import add_periods, current_period
from app.users.exceptions import UserNotFound

SOURCE = "subscription"  # grants' and allocations' source
ACTIVE, CANCELED = "active", "canceled"

_INSERT_ALLOCATION = """
    INSERT INTO allocations (project_id, user_id, source, source_ref, period_start)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1
"""
_SET_ALLOCATION_GRANT = """
    UPDATE allocations SET grant_id = $6 WHERE project_id = $1 AND user_id = $2
    AND source = $3 AND source_ref = $4 AND period_start = $5
"""


# --- plans -------------------------------------------------------------------------------------


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        id=plan.id,
        name=plan.name,
        price=PriceOut(amount=plan.price_amount, currency=plan.price_currency),
        interval=plan.interval,
        credits_per_period=plan.credits_per_period,
        tier_id=plan.tier_id,
        stripe_price_id=plan.stripe_price_id,
        razorpay_plan_id=plan.razorpay_plan_id,
        active=plan.active,
        created_at=plan.created_at,
        updated_at=plan.updated_at,
    )


async def create_plan(session: AsyncSession, project_id: uuid.UUID, body: PlanCreate) -> Plan:
    if body.tier_id is not None:
        await tiers.get(session, project_id, body.tier_id)
    values = body.model_dump(exclude={"price"})
    stmt = (
        insert(Plan)
        .values(
            project_id=project_id,
            price_amount=body.price.amount,
            price_currency=body.price.currency,
            **values,
        )
        .on_conflict_do_nothing()
        .returning(Plan)
    )
    plan = (await session.execute(stmt)).scalar_one_or_none()
    if plan is None:
        raise PlanExists()
    return plan


async def get_plan(
    session: AsyncSession, project_id: uuid.UUID, plan_id: str, *, lock: str | None = None
) -> Plan:
    """The plan; ``lock`` "update" (delete) or "key_share" (subscribe: the plan cannot be
    deleted until the subscription is committed)."""
    stmt = scoped_select(Plan, project_id).where(Plan.id == plan_id)
    if lock == "update":
        stmt = stmt.with_for_update()
    elif lock == "key_share":
        stmt = stmt.with_for_update(read=True, key_share=True)
    if lock is not None:
        stmt = stmt.execution_options(populate_existing=True)
    plan = (await session.execute(stmt)).scalar_one_or_none()
    if plan is None:
        raise PlanNotFound()
    return plan


async def list_plans(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Plan]:
    stmt = scoped_select(Plan, project_id)
    if after is not None:
        stmt = stmt.where(Plan.id > after)
    return list((await session.execute(stmt.order_by(Plan.id).limit(limit + 1))).scalars())


async def patch_plan(
    session: AsyncSession, project_id: uuid.UUID, plan_id: str, body: PlanPatch
) -> Plan:
    await get_plan(session, project_id, plan_id)
    values: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"price"})
    for required in ("name", "credits_per_period", "active"):
        if required in values and values[required] is None:
            values.pop(required)
    if body.price is not None:
        values["price_amount"] = body.price.amount
        values["price_currency"] = body.price.currency
    if values.get("tier_id") is not None:
        await tiers.get(session, project_id, values["tier_id"])
    if values:
        await session.execute(
            scoped_update(Plan, project_id)
            .where(Plan.id == plan_id)
            .values(**values, updated_at=func.now())
        )
    return await get_plan(session, project_id, plan_id, lock="key_share")


async def delete_plan(session: AsyncSession, project_id: uuid.UUID, plan_id: str) -> None:
    """Delete a plan none of whose subscriptions is still running (ended ones keep its id)."""
    await get_plan(session, project_id, plan_id, lock="update")
    running = (
        scoped_columns(Subscription, project_id, Subscription.id)
        .where(Subscription.plan_id == plan_id, Subscription.ended_at.is_(None))
        .limit(1)
    )
    if (await session.execute(running)).first() is not None:
        raise PlanInUse()
    await session.execute(scoped_delete(Plan, project_id).where(Plan.id == plan_id))


# --- subscriptions -----------------------------------------------------------------------------


def subscription_out(sub: Subscription) -> SubscriptionOut:
    return SubscriptionOut.model_validate(sub, from_attributes=True)


async def get_subscription(
    session: AsyncSession, project_id: uuid.UUID, subscription_id: uuid.UUID, *, lock: bool = False
) -> Subscription:
    stmt = scoped_select(Subscription, project_id).where(Subscription.id == subscription_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    sub = (await session.execute(stmt)).scalar_one_or_none()
    if sub is None:
        raise SubscriptionNotFound()
    return sub


async def list_subscriptions(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Subscription]:
    stmt = scoped_select(Subscription, project_id).where(Subscription.user_id == user_id)
    if after is not None:
        stmt = stmt.where(Subscription.id > after)
    stmt = stmt.order_by(Subscription.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def _user_tier(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> str | None:
    stmt = scoped_columns(User, project_id, User.tier_id).where(User.id == user_id)
    tier_id: str | None = (await session.execute(stmt)).scalar_one_or_none()
    return tier_id


async def subscribe(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, body: SubscriptionCreate
) -> Subscription:
    """Start a subscription: the first period begins now and its credits are granted."""
    # The account lock comes first: it serialises a user's subscription creations, so the
    # one-running-subscription check below cannot race.
    account = await credits.lock_for_user(session, project_id, user_id)
    if account is None:
        raise UserNotFound()
    plan = await get_plan(session, project_id, body.plan_id, lock="key_share")
    if not plan.active:
        raise PlanInactive()
    if body.provider != "manual":
        raise ProviderNotConfigured(
            f"Subscriptions through {body.provider} are not available yet; use provider 'manual'."
        )
    running = (
        scoped_columns(Subscription, project_id, Subscription.id)
        .where(Subscription.user_id == user_id, Subscription.ended_at.is_(None))
        .limit(1)
    )
    if (await session.execute(running)).first() is not None:
        raise SubscriptionExists()

    now = utcnow()
    metadata: dict[str, Any] = {"period_anchor": now.isoformat()}
    previous_tier = await _user_tier(session, project_id, user_id)
    moves_tier = plan.tier_id is not None and plan.tier_id != previous_tier
    if moves_tier:
        metadata.update(tier_id=plan.tier_id, previous_tier_id=previous_tier)
    stmt = (
        insert(Subscription)
        .values(
            project_id=project_id,
            id=uuid7(),
            user_id=user_id,
            plan_id=plan.id,
            provider=body.provider,
            status=ACTIVE,
            current_period_start=now,
            current_period_end=add_periods(now, plan.interval, 1),
            metadata_=metadata,
        )
        .returning(Subscription)
    )
    sub = (await session.execute(stmt)).scalar_one()
    granted = await _grant_period(session, account, sub, plan, period_start=now)
    if moves_tier:
        assert plan.tier_id is not None
        await tiers.assign(session, project_id, user_id, plan.tier_id, account=account)
    await events.record(
        session,
        project_id=project_id,
        type="subscription.created",
        user_id=user_id,
        data={**_event_data(sub), "credits_granted": granted, "balance": account.available},
    )
    return sub


async def cancel(
    session: AsyncSession, project_id: uuid.UUID, subscription_id: uuid.UUID, *, at_period_end: bool
) -> Subscription:
    """Cancel now (ends it, restores the tier) or at the period end (the worker ends it then).

    Canceling a subscription that has already ended changes nothing. Credits are kept.
    """
    sub = await get_subscription(session, project_id, subscription_id, lock=True)
    if sub.ended_at is not None or (at_period_end and sub.cancel_at_period_end):
        return sub
    now = utcnow()
    if at_period_end:
        await _update(session, sub, cancel_at_period_end=True, canceled_at=now)
    else:
        account = await credits.lock_for_user(session, project_id, sub.user_id)
        await _end(session, sub, account, ended_at=now, canceled_at=now)
    sub = await get_subscription(session, project_id, subscription_id, lock=True)
    await events.record(
        session,
        project_id=project_id,
        type="subscription.canceled",
        user_id=sub.user_id,
        data={**_event_data(sub), "at_period_end": at_period_end},
    )
    return sub


def _event_data(sub: Subscription) -> dict[str, Any]:
    return {
        "subscription_id": sub.id,
        "plan_id": sub.plan_id,
        "provider": sub.provider,
        "status": sub.status,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "ended_at": sub.ended_at,
    }


async def _update(session: AsyncSession, sub: Subscription, **values: Any) -> None:
    await session.execute(
        scoped_update(Subscription, sub.project_id)
        .where(Subscription.id == sub.id)
        .values(**values, updated_at=func.now())
    )


async def _grant_period(
    session: AsyncSession,
    account: LockedAccount,
    sub: Subscription,
    plan: Plan,
    *,
    period_start: datetime,
    payment_id: uuid.UUID | None = None,
) -> Decimal | None:
    """Grant the plan's credits for one period, once: the allocation row is inserted first and
    a period that already has one grants nothing (returns None). ``payment_id``: the provider
    payment that paid the period (its grant, for `creditd verify` and clawbacks)."""
    key = (account.project_id, account.user_id, SOURCE, str(sub.id), period_start)
    if await driver(session).fetchval(_INSERT_ALLOCATION, *key) is None:
        return None
    amount = plan.credits_per_period
    if amount > ZERO:
        # Sold credits: the period's price is their cost basis (deferred revenue).
        grant, _ = await credits.grant(
            session,
            account,
            amount=amount,
            source=SOURCE,
            reason=f"plan {plan.id}",
            category=credits.PAID,
            payment_id=payment_id,
            cost_amount=plan.price_amount,
            cost_currency=plan.price_currency,
        )
        await driver(session).execute(_SET_ALLOCATION_GRANT, *key, grant.id)
        await events.record(
            session,
            project_id=account.project_id,
            type="credits.granted",
            user_id=account.user_id,
            data={"grant_id": grant.id, "amount": amount, "source": SOURCE,
                  "subscription_id": sub.id, "plan_id": plan.id, "balance": account.available},
        )  # fmt: skip
    return amount


async def _end(
    session: AsyncSession,
    sub: Subscription,
    account: LockedAccount | None,
    *,
    ended_at: datetime,
    canceled_at: datetime | None = None,
) -> None:
    """Mark the subscription ended and give the user back the tier it had before."""
    values: dict[str, Any] = {"status": CANCELED, "ended_at": ended_at}
    if canceled_at is not None:
        values["canceled_at"] = canceled_at
    await _update(session, sub, **values)
    if account is not None:  # None: the user was deleted
        await _restore_tier(session, account, sub.metadata_)


async def _restore_tier(
    session: AsyncSession, account: LockedAccount, metadata: dict[str, Any]
) -> None:
    plan_tier = metadata.get("tier_id")
    if plan_tier is None:
        return  # the subscription did not move the user
    project_id, user_id = account.project_id, account.user_id
    if await _user_tier(session, project_id, user_id) != plan_tier:
        return  # moved to another tier meanwhile: that choice stands
    target: str | None = metadata.get("previous_tier_id")
    if target is not None:
        try:
            await tiers.get(session, project_id, target)
        except TierNotFound:
            target = None
    if target is None:
        target = await tiers.default_tier_id(session, project_id)
    if target == plan_tier:
        return
    if target is not None:
        await tiers.assign(session, project_id, user_id, target, account=account)
        return
    # No tier to go back to: the user is left without one (no tier refills).
    await session.execute(
        scoped_update(User, project_id)
        .where(User.id == user_id)
        .values(tier_id=None, tier_assigned_at=None, next_refill_at=None, updated_at=func.now())
    )
    await events.record(
        session,
        project_id=project_id,
        type="user.tier_changed",
        user_id=user_id,
        data={"tier_id": None, "reset_balance": False, "balance": account.available},
    )


# --- renewal worker ----------------------------------------------------------------------------

# The literal predicate matches the partial index ix_subscriptions_renewal.
_DUE = text("subscriptions.status = 'active' AND subscriptions.provider = 'manual'")


async def renew_due(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Start the current period of manual subscriptions whose period has ended, or end those
    set to cancel at the period end. Returns how many subscriptions were handled.

    Safe with several workers (SKIP LOCKED on subscriptions, then on accounts) and after a crash
    (the batch is one transaction; the allocations key refuses a second grant for a period).
    After downtime a subscription gets one grant, for the current period.
    """
    stmt = (
        select(Subscription, User.account_id)
        .outerjoin(
            User,
            (User.project_id == Subscription.project_id)
            & (User.id == Subscription.user_id)
            & User.deleted_at.is_(None),
        )
        .where(_DUE, Subscription.current_period_end <= now)
        .order_by(Subscription.current_period_end)
        .limit(limit)
        .with_for_update(of=Subscription, skip_locked=True)
        .execution_options(populate_existing=True)
    )
    done = 0
    for sub, account_id in (await session.execute(stmt)).all():
        assert sub.current_period_end is not None  # the due predicate
        if account_id is None:  # the user was deleted: nothing to renew for
            await _end(session, sub, None, ended_at=sub.current_period_end)
            done += 1
            continue
        account = await credits.try_lock_by_id(session, sub.project_id, account_id, sub.user_id)
        if account is None:
            continue  # busy: it stays due and is picked up on the next run
        plan = (
            await session.execute(scoped_select(Plan, sub.project_id).where(Plan.id == sub.plan_id))
        ).scalar_one_or_none()
        if sub.cancel_at_period_end or plan is None:
            await _end(session, sub, account, ended_at=sub.current_period_end)
            await events.record(
                session,
                project_id=sub.project_id,
                type="subscription.ended",
                user_id=sub.user_id,
                data={**_event_data(sub), "status": CANCELED, "ended_at": sub.current_period_end},
            )
        else:
            await _renew(session, account, sub, plan, now=now)
        done += 1
    return done


async def _renew(
    session: AsyncSession, account: LockedAccount, sub: Subscription, plan: Plan, *, now: datetime
) -> None:
    anchor_text = sub.metadata_.get("period_anchor")
    anchor = datetime.fromisoformat(anchor_text) if anchor_text else sub.current_period_start
    assert anchor is not None
    start, end = current_period(anchor, plan.interval, now)
    granted = await _grant_period(session, account, sub, plan, period_start=start)
    await _update(session, sub, current_period_start=start, current_period_end=end)
    if granted is None:
        return  # this period was already granted
    await events.record(
        session,
        project_id=sub.project_id,
        type="subscription.renewed",
        user_id=sub.user_id,
        data={**_event_data(sub), "current_period_start": start, "current_period_end": end,
              "credits_granted": granted, "balance": account.available},
    )  # fmt: skip
