"""Payments: top-ups through a provider, the payment state machine, and applying provider facts.

Facts (``app/integrations/base.py``) come from webhooks and from the reconciliation job; both go
through ``apply_payment_fact``, so a payment is credited exactly once whichever arrives first.

Lock order, everywhere: the payment row (``FOR UPDATE``), then the user's account
(``credits.lock_for_user``). The payment row serialises every fact about one payment (the three
Razorpay events for one payment resolve to the same row and queue on it); the account comes
second because usage requests lock accounts and never payments, so they cannot be part of a
cycle. The ``uq_grants_payment_id`` index backs the "one grant per payment" rule in the
database as well.

State machine: created → pending → succeeded | failed | expired | canceled. Failed, expired and
canceled may still become succeeded (money that arrived is always credited); nothing moves a
payment out of succeeded. A failed attempt on a checkout that stays payable (a Razorpay link)
only records its reason: the payment stays open for reconciliation. After the success the
status is derived from the money facts: lost > disputed > won > refunded > partially_refunded
> succeeded. Refunds merge as max(cumulative), disputes only move forward (inquiry → open →
withdrawn → reinstated → won, or lost).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast

import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import Principal
from app.core.clock import utcnow
from app.core.ids import uuid7
from app.core.money import LIMIT, fmt, quantize
from app.core.secrets import SecretBox
from app.core.settings import PaymentsSettings
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db.models import Payment
from app.events import service as events
from app.integrations import registry
from app.integrations.base import (
    CheckoutRequest,
    DisputeChanged,
    Fact,
    InvalidSignature,
    MalformedWebhook,
    PaymentCanceled,
    PaymentExpired,
    PaymentFact,
    PaymentFailed,
    PaymentIdentified,
    PaymentPending,
    PaymentRefunded,
    PaymentSucceeded,
    ProviderError,
    ProviderName,
    SubscriptionLinked,
    SubscriptionPeriodPaid,
    SubscriptionStatusChanged,
)
from app.payments import currency
from app.payments import repository as repo
from app.payments.exceptions import (
    AmountNotPayable,
    CreditsRequired,
    InvalidCredits,
    InvalidWebhookSignature,
    MalformedWebhookBody,
    PaymentNotFound,
    ProviderFailed,
    ProviderUnavailable,
    UnknownCurrency,
    WebhookNotConfigured,
    require_success_url,
)
from app.payments.schemas import PaymentCreate, PaymentFilters, PaymentOut, WebhookReceived
from app.providers import service as providers
from app.users import service as users
from app.users.exceptions import UserNotFound

log = structlog.get_logger("creditd.payments")

SIGNATURE_FAILURES = Counter(
    "creditd_webhook_signature_failures_total",
    "Provider webhooks refused because their signature did not verify",
    ["provider"],
)

OPEN = frozenset({"created", "pending"})
# A later dispute state never moves back to an earlier one; equal ranks are final. Stripe
# reinstates the funds of a won dispute just before closing it: the verdict still follows.
_DISPUTE_RANK = {"inquiry": 0, "open": 1, "withdrawn": 2, "reinstated": 3, "won": 4, "lost": 4}
_DISPUTED = frozenset({"inquiry", "open", "withdrawn"})
_OPEN = frozenset({"created", "pending"})  # what reconciliation looks up
# The outcome stored on a provider event carrying several facts: the most telling one.
_OUTCOME_RANK = (
    "conflict", "amount_mismatch", "not_granted", "applied", "stale", "unmatched", "ignored",
)  # fmt: skip


# --- reading --------------------------------------------------------------------------------


def to_out(payment: Payment) -> PaymentOut:
    return PaymentOut(
        id=payment.id,
        user_id=payment.user_id,
        kind=payment.kind,
        provider=payment.provider,
        status=payment.status,
        amount=payment.amount,
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        credits=payment.credits,
        checkout_url=payment.checkout_url,
        provider_reference=payment.provider_reference,
        provider_payment_id=payment.provider_payment_id,
        subscription_id=payment.subscription_id,
        credits_granted=payment.credits_granted,
        credits_clawed_back=payment.credits_clawed_back,
        amount_refunded=_major(payment.amount_refunded_minor, payment.currency, payment.provider),
        dispute_status=payment.dispute_status,
        failure_reason=payment.failure_reason,
        metadata={str(k): str(v) for k, v in payment.metadata_.items()},
        succeeded_at=payment.succeeded_at,
        created_at=payment.created_at,
        updated_at=payment.updated_at,
    )


async def get(session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID) -> Payment:
    payment = await repo.get(session, project_id, payment_id)
    if payment is None:
        raise PaymentNotFound()
    return payment


async def list_payments(
    session: AsyncSession,
    project_id: uuid.UUID,
    filters: PaymentFilters,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Payment]:
    return await repo.list_payments(session, project_id, filters, limit=limit, after=after)


# --- top-ups --------------------------------------------------------------------------------


class Quote(NamedTuple):
    currency: str  # ISO 4217, upper case
    amount_minor: int
    credits: Decimal


def price(body: PaymentCreate, rates: Mapping[str, Decimal]) -> Quote:
    """What a top-up request costs in minor units and buys in credits, or a 422 (also for a
    request the provider's checkout can not take)."""
    require_success_url(body.provider, body.success_url)
    code = currency.normalize(body.currency)
    if code is None:
        raise UnknownCurrency(f"{body.currency!r} is not an ISO 4217 currency code.")
    try:
        minor = currency.to_minor(body.amount, code, body.provider)
    except currency.NotPayable as exc:
        raise AmountNotPayable(f"{fmt(body.amount)} {code} cannot be charged: {exc}") from exc
    if body.credits is not None:
        return Quote(code, minor, body.credits)
    rate = rates.get(code)
    if rate is None:
        raise CreditsRequired(f"Send credits: the project has no credits_per_unit for {code}.")
    granted = quantize(body.amount * rate)
    if granted <= 0 or granted >= LIMIT:
        raise InvalidCredits(f"{fmt(body.amount)} x {fmt(rate)} gives {fmt(granted)} credits.")
    return Quote(code, minor, granted)


async def create_payment(
    session: AsyncSession,
    principal: Principal,
    body: PaymentCreate,
    quote: Quote,
    *,
    settings: PaymentsSettings,
    box: SecretBox,
) -> Payment:
    """Record a top-up and open its checkout at the provider.

    The row is inserted before the provider call and the call's failure raises, so the request
    transaction rolls back: nothing is stored for a checkout that does not exist. Our payment id
    is the provider's idempotency key, so the adapter's own retries never open two checkouts.
    """
    code, minor, granted = quote
    project_id = principal.project_id
    try:
        await users.get(session, project_id, body.user_id)
    except UserNotFound:
        # Only a brand-new user gets locked here (its account is created under the lock);
        # an existing user's account is never held across the provider call.
        await users.lock_account(session, principal, body.user_id, auto_create=True)

    creds = await providers.credentials(
        session, project_id, body.provider, settings=settings, box=box
    )
    payment_id = uuid7()
    now = utcnow()
    await repo.insert_payment(
        session,
        {
            "project_id": project_id,
            "id": payment_id,
            "user_id": body.user_id,
            "kind": "top_up",
            "provider": body.provider,
            "status": "created",
            "amount": body.amount,
            "currency": code,
            "amount_minor": minor,
            "credits": granted,
            "success_url": body.success_url,
            "cancel_url": body.cancel_url,
            "metadata_": dict(body.metadata),
            "reconcile_at": now + timedelta(seconds=settings.reconcile_after_seconds),
        },
    )
    request = CheckoutRequest(
        payment_id=payment_id,
        project_id=project_id,
        user_id=body.user_id,
        amount_minor=minor,
        currency=code,
        credits=granted,
        description=f"{fmt(granted)} credits",
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        metadata=dict(body.metadata),
        idempotency_key=str(payment_id),
        # Reconciliation stops looking then: a checkout still payable later would take money
        # that only a webhook could credit.
        expires_at=now + timedelta(seconds=settings.reconcile_give_up_seconds),
    )
    try:
        checkout = await registry.get(body.provider).create_checkout(creds, request)
    except ProviderError as exc:
        log.warning(
            "provider_checkout_failed",
            provider=body.provider,
            transient=exc.transient,
            status=exc.status,
            error=str(exc)[:300],
        )
        if exc.transient:
            raise ProviderUnavailable(
                f"{body.provider} did not answer in time or is failing; nothing was created."
            ) from exc
        raise ProviderFailed(f"{body.provider} refused the checkout: {exc}") from exc
    return await repo.update(
        session,
        project_id,
        payment_id,
        {
            "checkout_url": checkout.url,
            "provider_reference": checkout.reference,
            "provider_order_id": checkout.order_id,
        },
    )


async def record_subscription_payment(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    provider: ProviderName,
    subscription_id: uuid.UUID,
    user_id: str,
    charge_id: str,
    provider_payment_id: str | None,
    amount_minor: int,
    currency: str,
    credits: Decimal,
    plan_id: str,
) -> Payment | None:
    """Record one paid subscription period (a Stripe invoice, a Razorpay charge) as a succeeded
    payment; None when this charge was recorded before (then grant nothing).

    The caller then grants ``credits`` with ``payment_id`` = the returned payment's id and
    calls ``link_grant``: refunds and disputes of the charge claw back from that grant like a
    top-up's.
    """
    code = currency.upper()
    if provider_payment_id is None:
        # Its identification (Stripe's invoice_payment.paid) may come before or after this.
        await repo.lock_reference(session, project_id, provider, charge_id)
    payment = await repo.insert_payment_once(
        session,
        {
            "project_id": project_id,
            "id": uuid7(),
            "user_id": user_id,
            "kind": "subscription",
            "provider": provider,
            "status": "succeeded",
            "amount": _major(amount_minor, code, provider),
            "currency": code,
            "amount_minor": amount_minor,
            "credits": credits,
            "provider_reference": charge_id,
            "provider_payment_id": provider_payment_id,
            "subscription_id": subscription_id,
            "succeeded_at": utcnow(),
            "metadata_": {"plan_id": plan_id},
        },
    )
    if payment is not None and provider_payment_id is None:
        await _claim_pending_identification(session, payment)
    return payment


async def _claim_pending_identification(session: AsyncSession, payment: Payment) -> None:
    """Take the provider payment id an earlier identification left for this payment's
    reference ("unmatched" then, "applied" or "conflict" now)."""
    if payment.provider_reference is None:
        return
    pending = await repo.pending_identification(
        session, payment.project_id, payment.provider, payment.provider_reference
    )
    if pending is None or pending.provider_payment_id is None:
        return
    claimed = await _claim_provider_payment_id(session, payment, pending.provider_payment_id)
    await repo.settle_identification(
        session, pending, outcome="applied" if claimed else "conflict", payment_id=payment.id
    )
    log.info(
        "payment_identified_late",
        payment_id=str(payment.id),
        event_id=pending.event_id,
        claimed=claimed,
    )


async def link_grant(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    payment_id: uuid.UUID,
    grant_id: uuid.UUID,
    credits_granted: Decimal,
) -> None:
    """Remember the grant a subscription payment bought (``record_subscription_payment``)."""
    await repo.update(
        session,
        project_id,
        payment_id,
        {"grant_id": grant_id, "credits_granted": credits_granted},
    )


def _major(minor: int, code: str, provider: str) -> Decimal:
    """An amount ``provider`` reported (its minor units), in major units of ``code``."""
    return currency.to_major(minor, code, cast(ProviderName, provider))


# --- facts ----------------------------------------------------------------------------------


def derived_status(
    *, status: str, succeeded: bool, amount_minor: int, refunded_minor: int, dispute: str | None
) -> str:
    """The status a payment shows: its own before the success, the money's after it."""
    if not succeeded:
        return status
    if dispute == "lost":
        return "lost"
    if dispute in _DISPUTED:
        return "disputed"
    if dispute in ("won", "reinstated"):
        return "won"
    if refunded_minor >= amount_minor > 0:
        return "refunded"
    if refunded_minor > 0:
        return "partially_refunded"
    return "succeeded"


def clawback_target(
    *,
    credits_granted: Decimal,
    amount_minor: int,
    refunded_minor: int,
    dispute: str | None,
    dispute_minor: int,
) -> Decimal:
    """Credits the payment's refunds and disputes take back: credits_granted x the larger of
    the refunded share and the disputed share (a lost dispute takes everything), rounded
    half-up to 6 places. Integer arithmetic: exact whatever the digits."""
    if amount_minor <= 0:
        return Decimal(0)
    taken = min(refunded_minor, amount_minor)
    if dispute == "lost":
        taken = amount_minor
    elif dispute == "withdrawn":
        taken = max(taken, min(dispute_minor, amount_minor))
    micro = int(credits_granted.scaleb(6))
    target = (2 * micro * taken + amount_minor) // (2 * amount_minor)
    return Decimal(target).scaleb(-6)


def _status_of(payment: Payment, **changes: Any) -> str:
    merged = {
        "status": payment.status,
        "succeeded": payment.succeeded_at is not None,
        "amount_minor": payment.amount_minor,
        "refunded_minor": payment.amount_refunded_minor,
        "dispute": payment.dispute_status,
        **changes,
    }
    return derived_status(**merged)


def _payment_data(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "provider": payment.provider,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "credits": payment.credits,
    }


async def _event(session: AsyncSession, payment: Payment, type: str, **data: Any) -> None:
    await events.record(
        session,
        project_id=payment.project_id,
        type=type,
        user_id=payment.user_id,
        data={**_payment_data(payment), **data},
    )


async def apply_payment_fact(
    session: AsyncSession, project_id: uuid.UUID, provider: str, fact: PaymentFact
) -> tuple[str, uuid.UUID | None]:
    """Apply one fact to the payment it names: (outcome, payment id or None if unmatched).

    Idempotent and order-independent: a fact already applied, or one that would move the
    payment backwards, changes nothing ("ignored" / "stale").
    """
    if isinstance(fact, PaymentIdentified) and fact.ref.reference is not None:
        # Against record_subscription_payment: one of the two sees the other's row.
        await repo.lock_reference(session, project_id, provider, fact.ref.reference)
    found = await repo.resolve(session, project_id, provider, fact.ref)
    if found is None:
        # An identification is kept on its event (receive_webhook) for the payment to come.
        return "unmatched", None
    payment = await repo.get(session, project_id, found, for_update=True)
    if payment is None:  # a project deleted meanwhile
        return "unmatched", None
    match fact:
        case PaymentSucceeded():
            outcome = await _succeeded(session, payment, fact)
        case PaymentPending():
            outcome = await _pending(session, payment)
        case PaymentFailed() | PaymentExpired() | PaymentCanceled():
            outcome = await _ended(session, payment, fact)
        case PaymentRefunded():
            outcome = await _refunded(session, payment, fact)
        case DisputeChanged():
            outcome = await _disputed(session, payment, fact)
        case PaymentIdentified():
            outcome = await _identified(session, payment, fact)
    log.info(
        "payment_fact_applied",
        payment_id=str(payment.id),
        fact=type(fact).__name__,
        outcome=outcome,
    )
    return outcome, payment.id


async def _claim_provider_payment_id(
    session: AsyncSession, payment: Payment, provider_payment_id: str | None
) -> bool:
    """Tie the provider's payment id to ``payment``; False when that money is another
    payment's (or this payment already has other money): an operator event, nothing applied."""
    if provider_payment_id is None or payment.provider_payment_id == provider_payment_id:
        return True
    holder: uuid.UUID | None = None
    if payment.provider_payment_id is None:
        if await repo.set_provider_payment_id(
            session, payment.project_id, payment.id, provider_payment_id
        ):
            payment.provider_payment_id = provider_payment_id
            return True
        holder = await repo.payment_holding(
            session, payment.project_id, payment.provider, provider_payment_id
        )
    log.warning(
        "payment_conflict",
        payment_id=str(payment.id),
        provider_payment_id=provider_payment_id,
        recorded=payment.provider_payment_id,
    )
    await _event(
        session,
        payment,
        "payment.conflict",
        provider_payment_id=provider_payment_id,
        recorded_provider_payment_id=payment.provider_payment_id,
        held_by_payment_id=holder,
    )
    return False


async def _succeeded(session: AsyncSession, payment: Payment, fact: PaymentSucceeded) -> str:
    if payment.succeeded_at is not None:
        if fact.provider_payment_id not in (None, payment.provider_payment_id):
            # The payment's own id, when the success came without it (Razorpay's
            # payment_link.paid without its payment entity); else a second, different payment
            # for one checkout, which the operator must refund.
            claimed = await _claim_provider_payment_id(session, payment, fact.provider_payment_id)
            return "applied" if claimed else "conflict"
        return "ignored"
    got_currency = fact.currency.upper()
    if fact.amount_minor != payment.amount_minor or got_currency != payment.currency:
        reason = (
            f"amount_mismatch: paid {fact.amount_minor} {got_currency}, "
            f"expected {payment.amount_minor} {payment.currency}"
        )
        if payment.failure_reason == reason:
            return "amount_mismatch"  # reported already (Razorpay sends three events per payment)
        log.warning(
            "payment_amount_mismatch",
            payment_id=str(payment.id),
            expected=f"{payment.amount_minor} {payment.currency}",
            got=f"{fact.amount_minor} {got_currency}",
        )
        # The checkout was paid, with the wrong money: asking the provider again cannot
        # change that, so reconciliation stops (it would report it again every hour).
        payment = await repo.update(
            session,
            payment.project_id,
            payment.id,
            {"failure_reason": reason, "reconcile_at": None},
        )
        await _event(
            session,
            payment,
            "payment.amount_mismatch",
            expected={"amount_minor": payment.amount_minor, "currency": payment.currency},
            got={"amount_minor": fact.amount_minor, "currency": got_currency},
            provider_payment_id=fact.provider_payment_id,
        )
        return "amount_mismatch"
    if not await _claim_provider_payment_id(session, payment, fact.provider_payment_id):
        return "conflict"
    learned = {}
    if fact.ref.order_id is not None and payment.provider_order_id is None:
        learned["provider_order_id"] = fact.ref.order_id
    account = await credits.lock_for_user(session, payment.project_id, payment.user_id)
    if account is None:
        # The user was deleted after paying: nothing to credit; the operator refunds.
        log.warning("payment_user_gone", payment_id=str(payment.id), user_id=payment.user_id)
        await _event(session, payment, "payment.unclaimable", reason="user_deleted")
        return "unmatched"
    grant, entry = await credits.grant(
        session,
        account,
        amount=payment.credits,
        source="purchase",
        reason=f"payment {payment.id}",
        ledger_kind="purchase",
        category="paid",
        payment_id=payment.id,
        cost_amount=payment.amount,
        cost_currency=payment.currency,
    )
    now = utcnow()
    payment = await repo.update(
        session,
        payment.project_id,
        payment.id,
        {
            **learned,
            "status": _status_of(payment, succeeded=True),
            "grant_id": grant.id,
            "credits_granted": payment.credits,
            "succeeded_at": now,
            "failure_reason": None,
            "reconcile_at": None,
        },
    )
    await _event(
        session, payment, "payment.succeeded", provider_payment_id=fact.provider_payment_id
    )
    await events.record(
        session,
        project_id=payment.project_id,
        type="credits.granted",
        user_id=payment.user_id,
        data={
            "grant_id": grant.id,
            "amount": payment.credits,
            "source": "purchase",
            "category": "paid",
            "payment_id": payment.id,
            "ledger_entry_id": entry,
            "balance": account.available,
        },
    )
    # A refund or dispute that arrived before the success takes its share right away.
    await _settle(session, payment, account)
    return "applied"


async def _identified(session: AsyncSession, payment: Payment, fact: PaymentIdentified) -> str:
    if payment.provider_payment_id == fact.provider_payment_id:
        return "ignored"
    if not await _claim_provider_payment_id(session, payment, fact.provider_payment_id):
        return "conflict"
    return "applied"


async def _pending(session: AsyncSession, payment: Payment) -> str:
    if payment.status != "created":
        return "stale"
    await repo.update(session, payment.project_id, payment.id, {"status": "pending"})
    return "applied"


_ENDED = {PaymentFailed: "failed", PaymentExpired: "expired", PaymentCanceled: "canceled"}


async def _ended(
    session: AsyncSession, payment: Payment, fact: PaymentFailed | PaymentExpired | PaymentCanceled
) -> str:
    if payment.status not in OPEN:
        return "stale"
    if (
        isinstance(fact, PaymentFailed)
        and fact.ref.provider_payment_id is not None
        and payment.provider_payment_id not in (None, fact.ref.provider_payment_id)
    ):
        return "stale"  # an earlier, failed attempt; another one is this payment's money
    status = _ENDED[type(fact)]
    if isinstance(fact, PaymentFailed) and fact.checkout_open:
        # Only an attempt failed and the checkout is still payable: the payment stays open
        # (reconciliation never looks at a failed one, so a later attempt's money whose
        # webhooks are lost would go uncredited); the reason is kept and reported.
        payment = await repo.update(
            session, payment.project_id, payment.id, {"failure_reason": fact.reason}
        )
        await _event(session, payment, "payment.failed", reason=fact.reason, checkout_open=True)
        return "applied"
    values: dict[str, Any] = {"status": status, "reconcile_at": None}
    if isinstance(fact, PaymentFailed):
        values["failure_reason"] = fact.reason
    payment = await repo.update(session, payment.project_id, payment.id, values)
    if isinstance(fact, PaymentFailed):
        await _event(session, payment, "payment.failed", reason=fact.reason, checkout_open=False)
    else:
        await _event(session, payment, f"payment.{status}")
    return "applied"


async def _refunded(session: AsyncSession, payment: Payment, fact: PaymentRefunded) -> str:
    if fact.currency.upper() != payment.currency:
        await _event(
            session,
            payment,
            "payment.amount_mismatch",
            expected={"currency": payment.currency},
            got={
                "currency": fact.currency.upper(),
                "amount_refunded_minor": fact.amount_refunded_minor,
            },
        )
        return "amount_mismatch"
    if not await _claim_provider_payment_id(session, payment, fact.ref.provider_payment_id):
        return "conflict"
    refunded = max(payment.amount_refunded_minor, fact.amount_refunded_minor)
    if refunded == payment.amount_refunded_minor:
        return "stale"
    payment = await repo.update(
        session,
        payment.project_id,
        payment.id,
        {
            "amount_refunded_minor": refunded,
            "status": _status_of(payment, refunded_minor=refunded),
        },
    )
    await _event(
        session,
        payment,
        "payment.refunded",
        amount_refunded=_major(refunded, payment.currency, payment.provider),
        amount_refunded_minor=refunded,
    )
    await _settle(session, payment, None)
    return "applied"


async def _disputed(session: AsyncSession, payment: Payment, fact: DisputeChanged) -> str:
    if not await _claim_provider_payment_id(session, payment, fact.ref.provider_payment_id):
        return "conflict"
    old = payment.dispute_status
    if old is not None and _DISPUTE_RANK[fact.state] <= _DISPUTE_RANK[old]:
        return "stale"
    amount = max(payment.dispute_amount_minor, fact.amount_minor)
    payment = await repo.update(
        session,
        payment.project_id,
        payment.id,
        {
            "dispute_status": fact.state,
            "dispute_amount_minor": amount,
            "status": _status_of(payment, dispute=fact.state),
        },
    )
    await _event(
        session,
        payment,
        "payment.disputed",
        dispute_status=fact.state,
        dispute_id=fact.dispute_id,
        dispute_amount=_major(amount, payment.currency, payment.provider),
    )
    await _settle(session, payment, None)
    return "applied"


async def _settle(session: AsyncSession, payment: Payment, account: LockedAccount | None) -> None:
    """Bring what the payment's grant lost in line with its refunds and disputes: claw back
    the difference, or restore it (a dispute won). Never touches other grants."""
    if payment.succeeded_at is None:
        return  # kept on the payment; applied right after the grant
    target = clawback_target(
        credits_granted=payment.credits_granted,
        amount_minor=payment.amount_minor,
        refunded_minor=payment.amount_refunded_minor,
        dispute=payment.dispute_status,
        dispute_minor=payment.dispute_amount_minor,
    )
    delta = target - payment.credits_clawed_back
    if not delta:
        return
    grant_id = payment.grant_id or await repo.grant_of(session, payment.project_id, payment.id)
    if account is None:
        account = await credits.lock_for_user(session, payment.project_id, payment.user_id)
    if grant_id is None or account is None:
        log.warning("payment_clawback_without_grant", payment_id=str(payment.id))
        return
    reason = f"payment {payment.id}: refunded/disputed"
    if delta > 0:
        from_grant = await credits.clawback(
            session, account, grant_id=grant_id, amount=delta, reason=reason
        )
        kind, data = "credits.clawed_back", {"from_grant": from_grant, "debt": delta - from_grant}
    else:
        await credits.restore(session, account, grant_id=grant_id, amount=-delta, reason=reason)
        kind, data = "credits.restored", {}
    await repo.update(
        session,
        payment.project_id,
        payment.id,
        {"credits_clawed_back": target, "grant_id": grant_id},
    )
    await events.record(
        session,
        project_id=payment.project_id,
        type=kind,
        user_id=payment.user_id,
        data={
            "payment_id": payment.id,
            "grant_id": grant_id,
            "amount": abs(delta),
            "credits_clawed_back": target,
            "balance": account.available,
            **data,
        },
    )


async def reconciliation_failed(
    session: AsyncSession, project_id: uuid.UUID, payment_id: uuid.UUID, *, reason: str
) -> None:
    """Reconciliation gave up without ever hearing from the provider: stop looking, keep the
    status (the payer may have paid; a late webhook still credits it) and tell the operator,
    once."""
    payment = await repo.get(session, project_id, payment_id, for_update=True)
    if payment is None or payment.reconcile_at is None or payment.status not in _OPEN:
        return  # settled meanwhile, or reported already
    payment = await repo.update(session, project_id, payment_id, {"reconcile_at": None})
    log.warning("payment_reconciliation_failed", payment_id=str(payment_id), reason=reason)
    await _event(session, payment, "payment.reconciliation_failed", reason=reason)


# --- webhooks -------------------------------------------------------------------------------

_SUBSCRIPTION_FACTS = (SubscriptionLinked, SubscriptionPeriodPaid, SubscriptionStatusChanged)


async def apply_facts(
    session: AsyncSession, project_id: uuid.UUID, provider: ProviderName, facts: Sequence[Fact]
) -> tuple[str, uuid.UUID | None, uuid.UUID | None]:
    """Apply a webhook's facts: (the outcome to store, payment id, subscription id)."""
    outcomes = ["ignored"]
    payment_id: uuid.UUID | None = None
    subscription_id: uuid.UUID | None = None
    for fact in facts:
        if isinstance(fact, _SUBSCRIPTION_FACTS):
            from app.plans import service as plans  # noqa: PLC0415 - plans imports payments

            outcomes.append(
                await plans.apply_subscription_fact(session, project_id, provider, fact)
            )
            subscription_id = subscription_id or fact.ref.subscription_id
        else:
            outcome, found = await apply_payment_fact(session, project_id, provider, fact)
            outcomes.append(outcome)
            payment_id = payment_id or found
    known = [o for o in outcomes if o in _OUTCOME_RANK]
    best = min(known, key=_OUTCOME_RANK.index) if known else outcomes[-1]
    return best, payment_id, subscription_id


async def receive_webhook(
    session: AsyncSession,
    *,
    project_id: uuid.UUID,
    provider: ProviderName,
    body: bytes,
    headers: Mapping[str, str],
    box: SecretBox,
    now: datetime,
) -> WebhookReceived:
    """Verify a provider's webhook over its raw bytes, store it once, apply its facts.

    Everything happens in the request's transaction: the event row exists exactly when its
    effects were committed, so a failure (5xx) makes the provider redeliver, and a redelivery
    of a stored event changes nothing. A refused webhook raises, and the rollback keeps
    nothing of it (only a counter).
    """

    # An unknown project has no secrets either: the same answer, so ids cannot be probed.
    secrets = await providers.webhook_secrets(session, project_id, provider, now=now, box=box)
    if not secrets:
        raise WebhookNotConfigured()
    impl = registry.get(provider)
    try:
        impl.verify_webhook(body, headers, secrets, now=now)
    except InvalidSignature as exc:
        SIGNATURE_FAILURES.labels(provider=provider).inc()
        log.warning("webhook_signature_invalid", provider=provider, reason=str(exc)[:200])
        raise InvalidWebhookSignature() from None
    try:
        event = impl.parse_webhook(body, headers)
    except MalformedWebhook as exc:
        raise MalformedWebhookBody(str(exc)[:500] or None) from None
    stored = await repo.insert_event(
        session,
        project_id=project_id,
        provider=provider,
        event_id=event.event_id,
        type=event.type,
        payload=dict(event.payload),
        body_sha256=hashlib.sha256(body).digest(),
    )
    if not stored:
        log.info("webhook_duplicate", provider=provider, event_id=event.event_id)
        return WebhookReceived(duplicate=True)
    outcome, payment_id, subscription_id = await apply_facts(
        session, project_id, provider, event.facts
    )
    await repo.set_event_outcome(
        session,
        project_id=project_id,
        provider=provider,
        event_id=event.event_id,
        outcome=outcome,
        payment_id=payment_id,
        subscription_id=subscription_id,
        **_pending_identification(event.facts, outcome),
    )
    log.info(
        "webhook_received",
        provider=provider,
        event_id=event.event_id,
        type=event.type,
        outcome=outcome,
    )
    return WebhookReceived(duplicate=False, outcome=outcome)


def _pending_identification(facts: Sequence[Fact], outcome: str) -> dict[str, str | None]:
    """What an unmatched event must remember for the payment recorded later
    (``record_subscription_payment`` claims it by reference)."""
    if outcome != "unmatched":
        return {}
    for fact in facts:
        if isinstance(fact, PaymentIdentified) and fact.ref.reference is not None:
            return {
                "reference": fact.ref.reference,
                "provider_payment_id": fact.provider_payment_id,
            }
    return {}
