"""Plans and subscriptions.

A subscription belongs to a provider that drives it. ``manual`` is driven by creditd itself:
the first period starts at subscription, and the renewal worker starts each next one. Stripe and
Razorpay drive theirs from webhooks (``apply_subscription_fact``) through the same two steps:
``_grant_period`` (one grant per subscription and period, guaranteed by the ``allocations``
primary key) and ``_end`` (status, ``ended_at``, the user's tier restored).

Provider subscriptions:
- Started ``incomplete`` with nothing granted; the user pays at the provider's checkout. The
  first paid period makes it ``active`` and moves the user to the plan's tier; every paid period
  (Stripe invoice, Razorpay charge) is recorded as a payment and grants the plan's credits once
  per period start. A failed renewal → ``past_due``; the provider giving up (halted, deleted,
  cancelled) ends it (``canceled``, tier restored). Facts about an ended subscription's status
  are ``stale``; money that arrives for it is still credited (it was paid).
- Lock order, everywhere in this module: the subscription row, then the user's account. No row
  lock is held across a call to a provider: a provider start takes no account lock at all (it
  grants nothing; the ``uq_subscriptions_running_per_user`` index is what keeps it to one
  running subscription per user), and a provider cancel calls the provider before it locks
  anything.

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
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import structlog
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
from app.integrations.base import (
    PROVIDERS,
    Credentials,
    PaymentProvider,
    ProviderError,
    ProviderName,
    SubscriptionCheckoutRequest,
    SubscriptionFact,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionStatusChanged,
)
from app.payments import currency
from app.payments import service as payments
from app.payments.exceptions import require_success_url
from app.plans.exceptions import (
    PlanExists,
    PlanInactive,
    PlanInUse,
    PlanNotAvailable,
    PlanNotFound,
    ProviderFailed,
    ProviderUnavailable,
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
INCOMPLETE, PAST_DUE = "incomplete", "past_due"  # provider subscriptions only
MANUAL = "manual"
# apply_subscription_fact outcomes (stored on the provider event)
APPLIED, IGNORED, UNMATCHED, STALE = "applied", "ignored", "unmatched", "stale"
# Money charged on the subscription that granted nothing (subscription.charge_not_granted).
NOT_GRANTED = "not_granted"

log = structlog.get_logger("creditd.plans")

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


# The target of ``uq_subscriptions_running_per_user``: one subscription not ended per user.
_RUNNING_PER_USER: dict[str, Any] = {
    "index_elements": ["project_id", "user_id"],
    "index_where": text("ended_at IS NULL"),
}


async def _has_running(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> bool:
    running = (
        scoped_columns(Subscription, project_id, Subscription.id)
        .where(Subscription.user_id == user_id, Subscription.ended_at.is_(None))
        .limit(1)
    )
    return (await session.execute(running)).first() is not None


async def subscribe(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, body: SubscriptionCreate
) -> Subscription:
    """Start a ``manual`` subscription: the first period begins now and its credits are
    granted. (Stripe and Razorpay: ``start_provider_subscription``.)"""
    if body.provider != MANUAL:
        raise ValueError(f"subscribe() is for manual subscriptions, not {body.provider}")
    # The account lock comes first: it serialises a user's manual subscription creations, so
    # the one-running-subscription check below cannot race among them.
    account = await credits.lock_for_user(session, project_id, user_id)
    if account is None:
        raise UserNotFound()
    plan = await get_plan(session, project_id, body.plan_id, lock="key_share")
    if not plan.active:
        raise PlanInactive()
    if await _has_running(session, project_id, user_id):
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
        .on_conflict_do_nothing(**_RUNNING_PER_USER)
        .returning(Subscription)
    )
    sub = (await session.execute(stmt)).scalar_one_or_none()
    if sub is None:  # a provider start (no account lock) got there first
        raise SubscriptionExists()
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


async def start_provider_subscription(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    body: SubscriptionCreate,
    *,
    provider_impl: PaymentProvider,
    creds: Credentials,
    success_url: str | None = None,
    cancel_url: str | None = None,
) -> tuple[Subscription, str]:
    """Start a Stripe or Razorpay subscription: stored ``incomplete`` with nothing granted;
    returns it and the checkout URL where the user pays. A provider failure stores nothing."""
    provider = body.provider
    if provider not in PROVIDERS:
        raise ValueError(f"start_provider_subscription() is not for {provider} subscriptions")
    # No account lock: nothing is granted here, and the lock would be held across the provider
    # call below (up to the provider timeout) and stall the user's usage. The unique index on
    # running subscriptions is the one-per-user guard instead (the insert below).
    if not await _user_exists(session, project_id, user_id):
        raise UserNotFound()
    plan = await get_plan(session, project_id, body.plan_id, lock="key_share")
    if not plan.active:
        raise PlanInactive()
    provider_plan = plan.stripe_price_id if provider == "stripe" else plan.razorpay_plan_id
    if provider_plan is None:
        field = "stripe_price_id" if provider == "stripe" else "razorpay_plan_id"
        raise PlanNotAvailable(f"Plan {plan.id!r} has no {field}: set it to sell the plan there.")
    if await _has_running(session, project_id, user_id):
        raise SubscriptionExists()
    success_url = success_url if success_url is not None else body.success_url
    require_success_url(provider, success_url)
    stmt = (
        insert(Subscription)
        .values(
            project_id=project_id,
            id=uuid7(),
            user_id=user_id,
            plan_id=plan.id,
            provider=provider,
            status=INCOMPLETE,
            metadata_={},
        )
        .on_conflict_do_nothing(**_RUNNING_PER_USER)
        .returning(Subscription)
    )
    sub = (await session.execute(stmt)).scalar_one_or_none()
    if sub is None:
        raise SubscriptionExists()
    request = SubscriptionCheckoutRequest(
        subscription_id=sub.id,
        project_id=project_id,
        user_id=user_id,
        plan_id=plan.id,
        provider_plan=provider_plan,
        success_url=success_url,
        cancel_url=cancel_url if cancel_url is not None else body.cancel_url,
        idempotency_key=f"creditd-subscription-{sub.id}",
    )
    try:
        checkout = await provider_impl.create_subscription_checkout(creds, request)
    except ProviderError as exc:
        raise _provider_problem(provider, exc) from exc
    await _update(
        session,
        sub,
        provider_reference=checkout.reference,
        checkout_url=checkout.url,
        provider_subscription_id=checkout.subscription_id,
        provider_customer_id=checkout.customer_id,
    )
    sub = await get_subscription(session, project_id, sub.id, lock=True)
    await events.record(
        session,
        project_id=project_id,
        type="subscription.created",
        user_id=user_id,
        data={**_event_data(sub), "credits_granted": ZERO, "checkout_url": checkout.url},
    )
    return sub, checkout.url


async def _user_exists(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> bool:
    stmt = scoped_columns(User, project_id, User.id).where(
        User.id == user_id, User.deleted_at.is_(None)
    )
    return (await session.execute(stmt)).first() is not None


def _provider_problem(provider: str, exc: ProviderError) -> ProviderUnavailable | ProviderFailed:
    if exc.transient:
        return ProviderUnavailable(f"{provider} is unavailable: {exc}")
    return ProviderFailed(f"{provider} refused the request: {exc}")


def provider_cancel_needed(sub: Subscription, *, at_period_end: bool) -> bool:
    """Whether canceling ``sub`` calls its provider (then the caller passes the adapter and
    credentials to ``cancel``): a provider subscription that exists there and is not already
    set to end as asked."""
    if sub.provider == MANUAL or sub.ended_at is not None or sub.provider_subscription_id is None:
        return False
    return not (at_period_end and sub.cancel_at_period_end and sub.status != INCOMPLETE)


async def cancel(
    session: AsyncSession,
    project_id: uuid.UUID,
    subscription_id: uuid.UUID,
    *,
    at_period_end: bool,
    provider_impl: PaymentProvider | None = None,
    creds: Credentials | None = None,
) -> Subscription:
    """Cancel now (ends it, restores the tier) or at the period end (then the renewal worker,
    or for a provider subscription the provider's own event, ends it).

    Canceling a subscription that has already ended changes nothing. Credits are kept. An
    ``incomplete`` provider subscription (never paid) has no period to wait for: it ends now.
    """
    sub = await get_subscription(session, project_id, subscription_id)
    if sub.status == INCOMPLETE:
        at_period_end = False
    if provider_cancel_needed(sub, at_period_end=at_period_end):
        if provider_impl is None or creds is None:
            raise ValueError("a provider subscription is canceled with its adapter and creds")
        assert sub.provider_subscription_id is not None  # provider_cancel_needed
        # Before any lock: a slow provider must not hold the subscription or the account.
        # A webhook may end it meanwhile; the locked re-read below sees that.
        try:
            await provider_impl.cancel_subscription(
                creds, sub.provider_subscription_id, at_period_end=at_period_end
            )
        except ProviderError as exc:
            raise _provider_problem(sub.provider, exc) from exc
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


@dataclass(frozen=True)
class _PaidBy:
    """The provider payment a period grant was bought with (the grant is ``paid``)."""

    payment_id: uuid.UUID
    amount: Decimal  # major units
    currency: str


async def _grant_period(
    session: AsyncSession,
    account: LockedAccount,
    sub: Subscription,
    plan: Plan,
    *,
    period_start: datetime,
    paid_by: _PaidBy | None = None,
    category: str = credits.PAID,
) -> Decimal | None:
    """Grant the plan's credits for one period, once: the allocation row is inserted first and
    a period that already has one grants nothing (returns None). ``payment_id``: the provider
    payment that paid the period (its grant, for `creditd verify` and clawbacks)."""
    key = (account.project_id, account.user_id, SOURCE, str(sub.id), period_start)
    if await driver(session).fetchval(_INSERT_ALLOCATION, *key) is None:
        return None
    amount = plan.credits_per_period
    if amount > ZERO:
        # Sold credits: what was paid for the period is their cost basis (deferred revenue);
        # a manual subscription's period is valued at the plan's price.
        paid = category == credits.PAID
        grant, entry = await credits.grant(
            session,
            account,
            amount=amount,
            source=SOURCE,
            reason=f"plan {plan.id}",
            category=category,
            payment_id=paid_by.payment_id if paid_by else None,
            cost_amount=(paid_by.amount if paid_by else plan.price_amount) if paid else None,
            cost_currency=(paid_by.currency if paid_by else plan.price_currency) if paid else None,
        )
        if paid_by is not None:
            # Refunds and disputes of this payment claw back from this grant.
            await payments.link_grant(
                session,
                project_id=account.project_id,
                payment_id=paid_by.payment_id,
                grant_id=grant.id,
                credits_granted=amount,
            )
        await driver(session).execute(_SET_ALLOCATION_GRANT, *key, grant.id)
        data: dict[str, Any] = {
            "grant_id": grant.id, "amount": amount, "source": SOURCE, "category": category,
            "ledger_entry_id": entry, "subscription_id": sub.id, "plan_id": plan.id,
            "balance": account.available,
        }  # fmt: skip
        if paid_by is not None:
            data["payment_id"] = paid_by.payment_id
        await events.record(
            session,
            project_id=account.project_id,
            type="credits.granted",
            user_id=account.user_id,
            data=data,
        )
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
    assert user_id is not None  # subscriptions belong to users' own accounts
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


# --- provider subscriptions: facts from webhooks -----------------------------------------------


async def apply_subscription_fact(
    session: AsyncSession, project_id: uuid.UUID, provider: ProviderName, fact: SubscriptionFact
) -> str:
    """Apply one verified provider fact about a subscription of ``project_id``; returns the
    outcome stored on the provider event: applied | ignored | unmatched | stale | not_granted.

    Idempotent: a replayed fact changes nothing (a period is granted once per charge and once
    per period start; status facts about an ended subscription are stale).
    """
    sub = await _locked_for_fact(session, project_id, provider, fact)
    if sub is None:
        log.warning("subscription_fact_unmatched", provider=provider, fact=type(fact).__name__,
                    ref=str(fact.ref))  # fmt: skip
        return UNMATCHED
    if isinstance(fact, SubscriptionLinked):
        return await _link(session, sub, fact)
    provider_id = fact.ref.provider_subscription_id
    # Found by our id before the checkout's own event linked it (Stripe may send the first
    # invoice.paid before checkout.session.completed): link it now.
    if (
        provider_id is not None
        and sub.provider_subscription_id is None
        and not await _adopt(session, sub, provider_id, None)
    ):
        return IGNORED
    if isinstance(fact, SubscriptionPeriodPaid):
        return await _period_paid(session, sub, fact)
    return await _status_changed(session, sub, fact)


async def _locked_for_fact(
    session: AsyncSession, project_id: uuid.UUID, provider: str, fact: SubscriptionFact
) -> Subscription | None:
    """The subscription the fact is about, locked: by our id, else the provider's subscription
    id, else the checkout that created it; always within the project and the provider. A fact
    naming a provider subscription other than the one on record matches nothing."""
    ref = fact.ref
    provider_id = ref.provider_subscription_id
    if isinstance(fact, SubscriptionLinked):
        provider_id = provider_id or fact.provider_subscription_id
    candidates = []
    if ref.subscription_id is not None:
        candidates.append(Subscription.id == ref.subscription_id)
    if provider_id is not None:
        candidates.append(Subscription.provider_subscription_id == provider_id)
    if ref.reference is not None:
        candidates.append(Subscription.provider_reference == ref.reference)
    for condition in candidates:
        stmt = (
            scoped_select(Subscription, project_id)
            .where(Subscription.provider == provider, condition)
            .limit(1)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        sub = (await session.execute(stmt)).scalar_one_or_none()
        if sub is None:
            continue
        known = sub.provider_subscription_id
        if provider_id is not None and known is not None and known != provider_id:
            return None
        return sub
    return None


async def _link(session: AsyncSession, sub: Subscription, fact: SubscriptionLinked) -> str:
    """Store the provider's subscription and customer ids; the status waits for the first paid
    period (Stripe completes the checkout before the first invoice is paid)."""
    unchanged = sub.provider_subscription_id is not None and (
        fact.provider_customer_id is None or sub.provider_customer_id is not None
    )
    # Stored even when the subscription has ended, so that money still charged through it
    # finds it (and is credited).
    if not unchanged and not await _adopt(
        session, sub, fact.provider_subscription_id, fact.provider_customer_id
    ):
        return IGNORED
    if sub.ended_at is not None:
        return STALE
    return IGNORED if unchanged else APPLIED


async def _adopt(
    session: AsyncSession, sub: Subscription, provider_id: str, customer_id: str | None
) -> bool:
    """Record the provider's ids on ``sub`` (those it lacks); False, changing nothing, when
    another subscription already holds that provider subscription id."""
    values: dict[str, Any] = {}
    if sub.provider_subscription_id is None:
        taken = (
            # uq_subscriptions_provider_ref spans projects: look where it looks.
            select(Subscription.project_id)
            .where(
                Subscription.provider == sub.provider,
                Subscription.provider_subscription_id == provider_id,
            )
            .limit(1)
        )
        if (await session.execute(taken)).first() is not None:
            log.warning("subscription_link_taken", subscription_id=str(sub.id),
                        provider_subscription_id=provider_id)  # fmt: skip
            return False
        values["provider_subscription_id"] = provider_id
    if customer_id is not None and sub.provider_customer_id is None:
        values["provider_customer_id"] = customer_id
    if values:
        await _update(session, sub, **values)
    return True


async def _period_paid(
    session: AsyncSession, sub: Subscription, fact: SubscriptionPeriodPaid
) -> str:
    """Record the charge as a payment and grant its period (each once), then make the
    subscription active for that period; the first paid period moves the user to the plan's
    tier. Money charged for an ended subscription is credited without reviving it."""
    project_id = sub.project_id
    account = await credits.lock_for_user(session, project_id, sub.user_id)
    plan = (
        await session.execute(scoped_select(Plan, project_id).where(Plan.id == sub.plan_id))
    ).scalar_one_or_none()
    if account is None or plan is None:
        # Deleted user (or, for an ended subscription, deleted plan): nobody to credit, but the
        # money was taken and the operator has to refund it.
        if account is None and sub.ended_at is None:
            await _end(session, sub, None, ended_at=utcnow())
        return await _not_granted(
            session, sub, fact, reason="user_deleted" if account is None else "plan_deleted"
        )
    if not fact.buys_period:
        return await _not_granted(session, sub, fact, reason="not_a_period_invoice")
    if fact.amount_minor > 0 and fact.currency.upper() != plan.price_currency.upper():
        # Priced in one currency at the provider and another here: the plan's price is what
        # the period is sold for, so the charge can not be taken as its payment.
        return await _not_granted(session, sub, fact, reason="currency_mismatch")
    paid_by = None
    if fact.amount_minor > 0:
        payment = await payments.record_subscription_payment(
            session,
            project_id=project_id,
            provider=cast(ProviderName, sub.provider),
            subscription_id=sub.id,
            user_id=sub.user_id,
            charge_id=fact.charge_id,
            provider_payment_id=fact.provider_payment_id,
            amount_minor=fact.amount_minor,
            currency=fact.currency,
            credits=plan.credits_per_period,
            plan_id=plan.id,
        )
        if payment is None:
            # A replay: this charge was recorded (and its period granted) before, in one
            # transaction, so nothing is left to do.
            return IGNORED
        paid_by = _PaidBy(payment.id, payment.amount, payment.currency)
    # A zero charge (trial, full discount) grants the period as promotional credits.
    granted = await _grant_period(
        session,
        account,
        sub,
        plan,
        period_start=fact.period_start,
        paid_by=paid_by,
        category=credits.PAID if paid_by else credits.PROMOTIONAL,
    )
    if granted is None:
        # Another charge already paid for this period start: the money is recorded on its
        # payment, the period is not granted twice.
        if paid_by is None:
            return IGNORED  # a zero charge took no money
        await _report_not_granted(
            session, sub, fact, reason="period_already_granted", payment_id=paid_by.payment_id
        )
        return NOT_GRANTED
    if sub.ended_at is not None:
        return APPLIED
    first = "activated_at" not in sub.metadata_
    values: dict[str, Any] = {"status": ACTIVE}
    if sub.current_period_start is None or fact.period_start >= sub.current_period_start:
        values.update(current_period_start=fact.period_start, current_period_end=fact.period_end)
    moves_tier = False
    if first:
        metadata = {**sub.metadata_, "activated_at": utcnow().isoformat()}
        previous_tier = await _user_tier(session, project_id, sub.user_id)
        moves_tier = plan.tier_id is not None and plan.tier_id != previous_tier
        if moves_tier:
            metadata.update(tier_id=plan.tier_id, previous_tier_id=previous_tier)
        values["metadata_"] = metadata
    await _update(session, sub, **values)
    if moves_tier:
        assert plan.tier_id is not None
        await tiers.assign(session, project_id, sub.user_id, plan.tier_id, account=account)
    sub = await get_subscription(session, project_id, sub.id, lock=True)
    data = {**_event_data(sub), "credits_granted": granted, "balance": account.available}
    if paid_by is not None:
        data["payment_id"] = paid_by.payment_id
    await events.record(
        session,
        project_id=project_id,
        type="subscription.activated" if first else "subscription.renewed",
        user_id=sub.user_id,
        data=data,
    )
    return APPLIED


async def _not_granted(
    session: AsyncSession, sub: Subscription, fact: SubscriptionPeriodPaid, *, reason: str
) -> str:
    """Record the charge as a payment that granted nothing and tell the operator, once per
    charge: the money was taken and only a refund (or a manual grant) settles it."""
    if fact.amount_minor <= 0:
        return IGNORED  # no money taken: nothing to record or refund
    payment = await payments.record_subscription_payment(
        session,
        project_id=sub.project_id,
        provider=cast(ProviderName, sub.provider),
        subscription_id=sub.id,
        user_id=sub.user_id,
        charge_id=fact.charge_id,
        provider_payment_id=fact.provider_payment_id,
        amount_minor=fact.amount_minor,
        currency=fact.currency,
        credits=ZERO,
        plan_id=sub.plan_id,
    )
    if payment is None:
        return IGNORED  # a replay: recorded and reported before
    await _report_not_granted(session, sub, fact, reason=reason, payment_id=payment.id)
    return NOT_GRANTED


async def _report_not_granted(
    session: AsyncSession,
    sub: Subscription,
    fact: SubscriptionPeriodPaid,
    *,
    reason: str,
    payment_id: uuid.UUID,
) -> None:
    log.warning("subscription_charge_not_granted", subscription_id=str(sub.id),
                charge_id=fact.charge_id, reason=reason)  # fmt: skip
    await events.record(
        session,
        project_id=sub.project_id,
        type="subscription.charge_not_granted",
        user_id=sub.user_id,
        data={
            **_event_data(sub),
            "reason": reason,
            "payment_id": payment_id,
            "charge_id": fact.charge_id,
            "amount": currency.to_major(
                fact.amount_minor, fact.currency.upper(), cast(ProviderName, sub.provider)
            ),
            "currency": fact.currency.upper(),
            "period_start": fact.period_start,
        },
    )


async def _status_changed(
    session: AsyncSession, sub: Subscription, fact: SubscriptionStatusChanged
) -> str:
    if sub.ended_at is not None:
        return STALE
    now = utcnow()
    values: dict[str, Any] = {}
    if fact.cancel_at_period_end is not None and fact.cancel_at_period_end != (
        sub.cancel_at_period_end
    ):
        values["cancel_at_period_end"] = fact.cancel_at_period_end
        if fact.cancel_at_period_end and sub.canceled_at is None:
            values["canceled_at"] = now
    if (
        fact.period_start is not None
        and fact.period_end is not None
        and (sub.current_period_start is None or fact.period_start >= sub.current_period_start)
        and sub.status != INCOMPLETE  # its first period is the paid one
    ):
        values.update(current_period_start=fact.period_start, current_period_end=fact.period_end)
    status = fact.status
    ends = status in ("halted", "ended") or (status == "canceled" and not fact.cancel_at_period_end)
    if ends:
        account = await credits.lock_for_user(session, sub.project_id, sub.user_id)
        if values:
            await _update(session, sub, **values)
        await _end(session, sub, account, ended_at=now)
        sub = await get_subscription(session, sub.project_id, sub.id, lock=True)
        await events.record(
            session,
            project_id=sub.project_id,
            type="subscription.ended",
            user_id=sub.user_id,
            data={**_event_data(sub), "reason": status},
        )
        return APPLIED
    event = None
    # An incomplete subscription stays so until its first period is paid, however its first
    # payment attempts go.
    if status == PAST_DUE and sub.status == ACTIVE:
        values["status"] = PAST_DUE
        event = "subscription.past_due"
    elif status == ACTIVE and sub.status == PAST_DUE:
        # The provider collected the overdue renewal (its paid fact grants the period).
        values["status"] = ACTIVE
    if not values:
        return IGNORED
    await _update(session, sub, **values)
    if event is not None:
        sub = await get_subscription(session, sub.project_id, sub.id, lock=True)
        await events.record(
            session,
            project_id=sub.project_id,
            type=event,
            user_id=sub.user_id,
            data=_event_data(sub),
        )
    return APPLIED


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
                data={
                    **_event_data(sub),
                    "status": CANCELED,
                    "ended_at": sub.current_period_end,
                    "reason": "canceled" if sub.cancel_at_period_end else "plan_deleted",
                },
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
