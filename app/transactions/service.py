"""Usage transactions: hold at start, charge or release at completion, sweep expired holds.

Lock order everywhere: the transaction row, then the account row. Each request is a few
statements: the locks (with the model's price read in the same statement), then one statement
that changes the balance and carries the transaction's row and its outbox event.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import repository as analytics
from app.auth.service import Principal
from app.core.clock import utcnow
from app.core.errors import AppError
from app.core.freeform import require_freeform
from app.core.ids import uuid7
from app.core.money import ZERO
from app.credits import gate
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db import writes
from app.db.models import Transaction
from app.events import service as events
from app.jobs import service as jobs
from app.jobs.exceptions import UnknownJob
from app.pricing import service as pricing
from app.pricing.exceptions import CostTooLarge, ExpressionFailed
from app.pricing.schemas import EvaluateIn, EvaluateOut, TokenUsage
from app.teams.exceptions import NotATeamMember, TeamNotFound
from app.tiers.rules import Rules
from app.transactions import repository as repo
from app.transactions.exceptions import (
    OverRefund,
    TransactionAlreadyCompleted,
    TransactionDenied,
    TransactionNotCompleted,
    TransactionNotFound,
    TransactionNotPending,
)
from app.transactions.repository import LockedTransaction
from app.transactions.schemas import (
    CheckIn,
    CheckOut,
    CompleteIn,
    CompleteOut,
    DenyReason,
    ExtendIn,
    RefundIn,
    RefundOut,
    StartIn,
    StartOut,
    TransactionFilters,
    UsageIn,
    UsageOut,
)
from app.users import service as users
from app.users.exceptions import UserNotFound

FINAL = ("completed", "failed")
log = structlog.get_logger("creditd.transactions")


def admits(available: Decimal, need: Decimal, floor: Decimal | None) -> bool:
    if floor is None:
        return True
    if need > 0:
        return available - need >= floor
    return available > floor


@dataclass(frozen=True)
class Admission:
    reason: DenyReason | None
    warnings: list[dict[str, Any]]


async def _admission(
    session: AsyncSession,
    principal: Principal,
    user_id: str,
    available: Decimal,
    rules: Rules,
    model: str,
    need: Decimal,
    team_id: str | None = None,
    *,
    locked: bool = False,
) -> Admission:
    """May a start needing ``need`` go ahead? Checked in this order, first failure wins:
    balance (``insufficient_credits``, against the tier's overage floor), spend caps
    (``spend_cap_reached`` for a deny cap; a warn cap only yields a warning), on a team's
    account the member's team caps (``spend_cap_reached``), the tier's concurrency limit
    (``concurrency_limit``). Callers that change anything hold the lock (a team's account lock
    serializes every charge of the team, so the member caps are race-free too). With
    ``locked`` (a start), a user who charges several accounts (a member of a team) also takes
    the per-user limits lock before their own caps and concurrency are read."""
    if not admits(available, need, rules.floor):
        return Admission("insufficient_credits", [])
    own_limits = rules.has_spend_caps or rules.max_concurrent is not None
    if locked and own_limits and (team_id is not None or rules.in_teams):
        await repo.lock_user_limits(session, principal.project_id, user_id)
    warnings: list[dict[str, Any]] = []
    if rules.has_spend_caps:
        today = utcnow().date()
        for cap in await repo.cap_usage(session, principal.project_id, user_id, model, today):
            used = cap["spent"] + cap["held"]
            over = used + need > cap["limit"] if need > 0 else used >= cap["limit"]
            if not over:
                continue
            if cap["action"] == "deny":
                return Admission("spend_cap_reached", [])
            warnings.append(
                {"period": cap["period"], "model": cap["model"] or None, "limit": cap["limit"],
                 "spent": cap["spent"], "held": cap["held"], "requested": need}
            )  # fmt: skip
    # On a team's account the member caps are always read: the flag read with the lock may
    # predate a cap set while this start waited for it.
    if team_id is not None and (rules.has_member_caps or locked):
        today = utcnow().date()
        for cap in await repo.member_cap_usage(
            session, principal.project_id, team_id, user_id, today
        ):
            used = cap["spent"] + cap["held"]
            if used + need > cap["limit"] if need > 0 else used >= cap["limit"]:
                return Admission("spend_cap_reached", [])
    if rules.max_concurrent is not None:
        pending = await repo.pending_count(session, principal.project_id, user_id)
        if pending >= rules.max_concurrent:
            return Admission("concurrency_limit", [])
    return Admission(None, warnings)


MESSAGES = {
    None: "Credits held; complete the transaction when usage is known.",
    "insufficient_credits": "Not enough available credits for this request.",
    "spend_cap_reached": "A spend cap of this user does not allow this request.",
    "concurrency_limit": "The user's tier allows no more concurrent transactions.",
}


def tokens_json(tokens: TokenUsage | None) -> dict[str, Any] | None:
    return tokens.dump() if tokens is not None else None


@dataclass(frozen=True)
class TierPrice:
    price: pricing.Price
    multiplier: Decimal


async def _team_for(
    session: AsyncSession, principal: Principal, user_id: str, team_id: str | None
) -> str | None:
    """The team a usage call charges: the one named, else with ``team_usage_default:
    only_team`` the user's only team (one extra query), else none (the user's own account)."""
    if team_id is not None or principal.settings.team_usage_default == "user":
        return team_id
    return await repo.only_team(session, principal.project_id, user_id)


async def _team_refused(session: AsyncSession, principal: Principal, team_id: str) -> AppError:
    """Why a team charge found no row: no such team (404), else not a member (403)."""
    if not await repo.team_is_live(session, principal.project_id, team_id):
        return TeamNotFound(f"Team '{team_id}' does not exist.")
    return NotATeamMember()


async def _lock_team_for_usage(
    session: AsyncSession,
    principal: Principal,
    user_id: str,
    model: str,
    team_id: str,
    *,
    job: bool,
) -> tuple[LockedAccount, Rules, TierPrice]:
    """Lock the team's account for member ``user_id``: the member's tier decides price,
    overage floor and concurrency. Members are existing users: nobody is auto-created."""
    with gate.waiting(session, principal.project_id, credits.team_gate_key(team_id)):
        locked = await repo.lock_team_account(
            session, principal.project_id, user_id, model, team_id, job=job
        )
    if locked is None:
        raise await _team_refused(session, principal, team_id)
    return _priced(principal, locked, model, job=job)


def _priced(
    principal: Principal, locked: repo.LockedForStart, model: str, *, job: bool
) -> tuple[LockedAccount, Rules, TierPrice]:
    """The locked account, its rules and the price for its tier (a job: its price times the
    tier's multiplier; a job has no per-model override)."""
    rules = locked.rules
    locked.account.thresholds = principal.settings.low_balance_thresholds
    if job:
        if locked.price is None:
            raise UnknownJob(f"Job '{model}' has no price: PUT /v1/jobs/{model} first.")
        return locked.account, rules, TierPrice(locked.price, rules.price_multiplier)
    price, multiplier = pricing.for_tier(
        locked.price, rules.price_multiplier, rules.override(model)
    )
    return locked.account, rules, TierPrice(pricing.require(price, model), multiplier)


async def _lock_for_usage(
    session: AsyncSession,
    principal: Principal,
    user_id: str,
    model: str,
    team_id: str | None = None,
    *,
    job: bool = False,
) -> tuple[LockedAccount, Rules, TierPrice]:
    """Lock the user's account with its tier rules and the model's price for its tier (or a
    job's price, times the tier's multiplier); on a first usage, check the price before
    auto-creating the user (an unknown model or job creates nobody). With a team (named, or
    the only_team default): the team's account instead."""
    team_id = await _team_for(session, principal, user_id, team_id)
    if team_id is not None:
        return await _lock_team_for_usage(session, principal, user_id, model, team_id, job=job)
    with gate.waiting(session, principal.project_id, user_id):
        locked = await repo.lock_account(session, principal.project_id, user_id, model, job=job)
    if locked is None:
        if job:
            await jobs.require(session, principal.project_id, model)
        else:
            await pricing.price_for(session, principal.project_id, model)
        await users.lock_account(session, principal, user_id, auto_create=True)
        locked = await repo.lock_account(session, principal.project_id, user_id, model, job=job)
        if locked is None:  # pragma: no cover - the user was created under our lock
            raise UserNotFound()
    return _priced(principal, locked, model, job=job)


async def start(session: AsyncSession, principal: Principal, body: StartIn) -> StartOut:
    account, rules, price = await _lock_for_usage(
        session, principal, body.user_id, body.model, body.team_id
    )
    user_id = body.user_id
    hold = pricing.cost(price.price, body.provisional_tokens, price.multiplier)
    admission = await _admission(
        session,
        principal,
        user_id,
        account.available,
        rules,
        body.model,
        hold,
        account.team_id,
        locked=True,
    )
    admitted = admission.reason is None
    txn_id = uuid7()
    ttl = body.hold_ttl_seconds or principal.settings.default_hold_ttl_seconds
    expires_at = utcnow() + timedelta(seconds=ttl) if admitted else None
    if not admitted:
        hold = ZERO
    status = "pending" if admitted else "denied"
    reason = admission.reason
    available_after = account.available - hold
    out = StartOut(
        transaction_id=txn_id,
        continue_=admitted,
        balance=available_after,
        credits_used=hold,
        hold_amount=hold,
        status=status,
        expires_at=expires_at,
        message=MESSAGES[reason],
        reason=reason,
    )
    carry = [
        repo.insert(
            transaction_id=txn_id,
            project_id=principal.project_id,
            account_id=account.id,
            user_id=user_id,
            model=body.model,
            feature_identifier=body.feature_identifier,
            status=status,
            reason=reason,
            hold_amount=hold,
            credits_used=ZERO,
            provisional_tokens=tokens_json(body.provisional_tokens),
            finalized_tokens=None,
            metadata=body.metadata,
            expires_at=expires_at,
            completed_at=None,
            team_id=account.team_id,
            price_snapshot=price.price.snapshot(price.multiplier) if admitted else None,
        ),
        events.outbox(
            project_id=principal.project_id,
            type="transaction.started" if admitted else "transaction.denied",
            user_id=user_id,
            data={
                **out.model_dump(mode="python", by_alias=True),
                "model": body.model,
                **account.owner,
            },
        ),
        *(
            events.outbox(
                project_id=principal.project_id,
                type="spend_cap.exceeded",
                user_id=user_id,
                data={**warning, "action": "warn", "transaction_id": txn_id},
            )
            for warning in admission.warnings
        ),
    ]
    # One statement, sent with the COMMIT: the hold (if any), the transaction row and its events.
    await credits.hold(session, account, amount=hold, transaction_id=txn_id, carry=carry, last=True)
    return out


async def _lock(
    session: AsyncSession, principal: Principal, txn_id: uuid.UUID
) -> LockedTransaction:
    txn = await repo.lock(session, principal.project_id, txn_id)
    if txn is None:
        raise TransactionNotFound()
    return txn


async def _lock_with_account(
    session: AsyncSession, principal: Principal, txn_id: uuid.UUID
) -> tuple[LockedTransaction, LockedAccount, Rules]:
    locked = await repo.lock_with_account(session, principal.project_id, txn_id)
    if locked is None:
        raise TransactionNotFound()
    locked[1].thresholds = principal.settings.low_balance_thresholds
    return locked


def completion_hash(body: CompleteIn) -> str:
    data = body.model_dump(mode="json")
    if body.finalized_tokens is not None:  # metrics at 0 are left out, as before they existed
        data["finalized_tokens"] = body.finalized_tokens.dump(mode="json")
    canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _replay(txn: LockedTransaction, digest: str) -> CompleteOut:
    if txn.completion_hash != digest or txn.completion_result is None:
        raise TransactionAlreadyCompleted()
    return CompleteOut.model_validate(txn.completion_result)


async def complete(
    session: AsyncSession, principal: Principal, txn_id: uuid.UUID, body: CompleteIn
) -> CompleteOut:
    txn, account, rules = await _lock_with_account(session, principal, txn_id)
    digest = completion_hash(body)
    if txn.status in FINAL:
        return _replay(txn, digest)
    if txn.status == "denied":
        raise TransactionDenied()
    metadata = {**txn.metadata, **body.metadata}
    if body.metadata:
        what = "metadata, merged into the transaction's,"
        require_freeform(metadata, what=what, loc=("body", "metadata"))
    tokens = body.finalized_tokens
    if tokens is None and txn.provisional_tokens is not None:
        tokens = TokenUsage.model_validate(txn.provisional_tokens)
    if tokens is None:
        tokens = TokenUsage()  # no counts at all: the usage still costs the request price
    charge = ZERO
    unpriced: str | None = None
    if body.success:
        price, multiplier = _completion_price(txn, rules)
        try:
            charge = pricing.cost(price, tokens, multiplier)
        except (ExpressionFailed, CostTooLarge) as exc:
            # The usage happened and must settle: a completion that failed here would leave
            # it uncharged (the hold expires) with no way to retry (the price is the start's
            # snapshot). It is charged what was held for it, and the event says why.
            charge, unpriced = txn.hold_amount, exc.detail
            log.warning("completion_unpriced", transaction_id=str(txn.id), reason=exc.slug)
    late = txn.status == "expired"  # the sweeper already released the hold
    release = ZERO if late else txn.hold_amount
    status = "completed" if body.success else "failed"
    out = CompleteOut(
        transaction_id=txn.id,
        status=status,
        credits_used=charge,
        balance=account.available + release - charge,
        balance_adjustment=release - charge,
        late=late,
    )
    result = out.model_dump(mode="python")
    carry = [
        repo.completion(
            principal.project_id,
            txn.id,
            status=status,
            credits_used=charge,
            finalized_tokens=tokens_json(tokens if body.success else body.finalized_tokens),
            metadata=metadata,
            late=late,
            completion_hash=digest,
            completion_result=result,
        ),
        events.outbox(
            project_id=principal.project_id,
            type=f"transaction.{status}",
            user_id=txn.user_id,
            data={
                **result,
                "model": txn.model,
                "hold_amount": txn.hold_amount,
                **account.owner,
                **({"pricing_error": unpriced} if unpriced is not None else {}),
            },
        ),
    ]
    if body.success:
        carry.append(
            analytics.add_usage(
                project_id=principal.project_id,
                at=None,  # the transaction's time: the day of completed_at, which refunds use
                user_id=txn.user_id,
                model=txn.model,
                feature=txn.feature_identifier,
                credits=charge,
            )
        )
        if txn.team_id is not None:
            carry.append(
                analytics.add_team_usage(
                    project_id=principal.project_id,
                    at=None,
                    team_id=txn.team_id,
                    user_id=txn.user_id,
                    credits=charge,
                )
            )
    # One statement, sent with the COMMIT: release and charge, the transaction's new state and
    # its event.
    await credits.settle(
        session,
        account,
        release=release,
        charge=charge,
        transaction_id=txn.id,
        kind="usage" if body.success else "hold_release",
        carry=carry,
        last=True,
    )
    return out


def _completion_price(txn: LockedTransaction, rules: Rules) -> tuple[pricing.Price, Decimal]:
    """The price recorded at start; for a transaction started before snapshots existed, the
    model's current price for the user's tier."""
    if txn.price_snapshot is not None:
        return pricing.Price.from_snapshot(txn.price_snapshot)
    price, multiplier = pricing.for_tier(
        txn.price, rules.price_multiplier, rules.override(txn.model)
    )
    return pricing.require(price, txn.model), multiplier


async def extend(
    session: AsyncSession, principal: Principal, txn_id: uuid.UUID, body: ExtendIn
) -> Transaction:
    """Move a pending hold's expiry; the row lock keeps the sweeper out meanwhile."""
    txn = await _lock(session, principal, txn_id)
    now = utcnow()
    if txn.status != "pending" or txn.expires_at is None or txn.expires_at <= now:
        raise TransactionNotPending(f"The transaction is {txn.status}.")
    expires_at = now + timedelta(seconds=body.hold_ttl_seconds)
    await repo.set_expiry(session, principal.project_id, txn.id, expires_at)
    return await get(session, principal, txn_id)


async def refund(
    session: AsyncSession, principal: Principal, txn_id: uuid.UUID, body: RefundIn
) -> RefundOut:
    txn, account, _ = await _lock_with_account(session, principal, txn_id)
    if txn.status != "completed":
        raise TransactionNotCompleted(f"The transaction is {txn.status}.")
    refundable = txn.credits_used - txn.refunded_total
    amount = body.amount if body.amount is not None else refundable
    if amount <= 0 or amount > refundable:
        raise OverRefund(f"At most {refundable} credits of this transaction can still be refunded.")
    grant, _ = await credits.grant(
        session,
        account,
        amount=amount,
        source="refund",
        reason=body.reason,
        transaction_id=txn.id,
        ledger_kind="refund",
    )
    refund_id = uuid7()
    await repo.add_refund(
        session,
        refund_id=refund_id,
        project_id=principal.project_id,
        transaction_id=txn.id,
        grant_id=grant.id,
        amount=amount,
        reason=body.reason,
    )
    if txn.completed_at is not None:  # refunds come off the usage of the day it was charged
        await analytics.add_past_usage(
            session,
            project_id=principal.project_id,
            at=txn.completed_at,
            now=utcnow(),
            user_id=txn.user_id,
            model=txn.model,
            feature=txn.feature_identifier,
            credits=-amount,
        )
        if txn.team_id is not None:
            await writes.run(
                session,
                [
                    analytics.add_team_usage(
                        project_id=principal.project_id,
                        at=txn.completed_at,
                        team_id=txn.team_id,
                        user_id=txn.user_id,
                        credits=-amount,
                        transactions=0,
                    )
                ],
            )
    out = RefundOut(
        refund_id=refund_id,
        amount=amount,
        refunded_total=txn.refunded_total + amount,
        balance=account.available,
    )
    await events.record(
        session,
        project_id=principal.project_id,
        type="transaction.refunded",
        user_id=txn.user_id,
        data={**out.model_dump(mode="python"), "transaction_id": txn.id, **account.owner},
    )
    return out


async def record_usage(session: AsyncSession, principal: Principal, body: UsageIn) -> UsageOut:
    """One-shot usage: charged in full (the usage already happened), no admission check.
    A job is charged its price times ``quantity`` (and the tier's multiplier)."""
    name = body.job if body.job is not None else body.model
    assert name is not None  # the schema asks for one of them
    is_job = body.job is not None
    account, _, price = await _lock_for_usage(
        session, principal, body.user_id, name, body.team_id, job=is_job
    )
    user_id = body.user_id
    charge = pricing.cost(price.price, body.tokens, price.multiplier, quantity=body.quantity or 1)
    txn_id = uuid7()
    now = utcnow()
    out = UsageOut(
        transaction_id=txn_id,
        status="completed",
        credits_used=charge,
        balance=account.available - charge,
    )
    carry = [
        repo.insert(
            transaction_id=txn_id,
            project_id=principal.project_id,
            account_id=account.id,
            user_id=user_id,
            model=name,
            feature_identifier=body.feature_identifier,
            status="completed",
            reason=None,
            hold_amount=ZERO,
            credits_used=charge,
            provisional_tokens=None,
            finalized_tokens=tokens_json(body.tokens),
            metadata=body.metadata,
            expires_at=None,
            completed_at=now,
            team_id=account.team_id,
            price_snapshot=price.price.snapshot(price.multiplier),
            job=is_job,
        ),
        events.outbox(
            project_id=principal.project_id,
            type="transaction.completed",
            user_id=user_id,
            # The keys of a completion's event: no hold, so all of the charge is the adjustment.
            data={
                **out.model_dump(mode="python"),
                "model": name,
                "hold_amount": ZERO,
                "balance_adjustment": ZERO - charge,
                "late": False,
                **account.owner,
            },
        ),
        analytics.add_usage(
            project_id=principal.project_id,
            at=now,
            user_id=user_id,
            model=name,
            feature=body.feature_identifier,
            credits=charge,
        ),
    ]
    if account.team_id is not None:
        carry.append(
            analytics.add_team_usage(
                project_id=principal.project_id,
                at=now,
                team_id=account.team_id,
                user_id=user_id,
                credits=charge,
            )
        )
    await credits.settle(
        session,
        account,
        release=ZERO,
        charge=charge,
        transaction_id=txn_id,
        kind="usage",
        carry=carry,
        last=True,
    )
    return out


async def check(session: AsyncSession, principal: Principal, body: CheckIn) -> CheckOut:
    """Would a start with these tokens (or this amount) be admitted now? Changes nothing.

    The same rules as a start, read without locks: a concurrent request may change the answer.
    """
    model = body.model or ""
    team_id = await _team_for(session, principal, body.user_id, body.team_id)
    if team_id is not None:
        found = await repo.read_team_for_check(
            session, principal.project_id, body.user_id, model, team_id
        )
        if found is None:
            raise await _team_refused(session, principal, team_id)
        available, price, rules = found
    else:
        available, price, rules = await repo.read_for_check(
            session, principal.project_id, body.user_id, model
        )
        if not principal.settings.auto_create_users and not await repo.user_exists(
            session, principal.project_id, body.user_id
        ):
            raise UserNotFound()
    if body.amount is not None:
        required = body.amount
    elif body.model is not None:
        price, multiplier = pricing.for_tier(price, rules.price_multiplier, rules.override(model))
        required = pricing.cost(pricing.require(price, model), body.provisional_tokens, multiplier)
    else:
        required = ZERO
    admission = await _admission(
        session, principal, body.user_id, available, rules, model, required, team_id
    )
    return CheckOut(
        allowed=admission.reason is None,
        reason=admission.reason,
        available=available,
        required=required,
    )


async def evaluate(session: AsyncSession, principal: Principal, body: EvaluateIn) -> EvaluateOut:
    """What ``tokens`` of ``model`` would cost (for ``user_id``: at their tier, read as /v1/check
    reads it), and how; changes nothing."""
    multiplier = Decimal(1)
    if body.user_id is None:
        price = await pricing.price_for(session, principal.project_id, body.model)
    else:
        _, found, rules = await repo.read_for_check(
            session, principal.project_id, body.user_id, body.model
        )
        if not principal.settings.auto_create_users and not await repo.user_exists(
            session, principal.project_id, body.user_id
        ):
            raise UserNotFound()
        tier_price, multiplier = pricing.for_tier(
            found, rules.price_multiplier, rules.override(body.model)
        )
        price = pricing.require(tier_price, body.model)
    detail = pricing.breakdown(price, body.tokens, multiplier)
    return EvaluateOut.model_validate({"credits": detail["credits"], "breakdown": detail})


async def get(session: AsyncSession, principal: Principal, txn_id: uuid.UUID) -> Transaction:
    txn = await repo.get(session, principal.project_id, txn_id)
    if txn is None:
        raise TransactionNotFound()
    return txn


async def list_transactions(
    session: AsyncSession,
    principal: Principal,
    filters: TransactionFilters,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[Transaction]:
    return await repo.list_transactions(
        session, principal.project_id, filters, limit=limit, after=after
    )


async def sweep_expired_holds(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Release holds past ``expires_at``; safe with several workers, and never waits for a
    locked account (SKIP LOCKED: its holds are released by a later sweep)."""
    due = await repo.lock_due(session, now, limit)
    if not due:
        return 0
    await repo.mark_expired(session, due)
    state: dict[uuid.UUID, LockedAccount] = {}
    for txn in due:
        account = state.setdefault(
            txn["account_id"],
            LockedAccount(
                txn["account_id"],
                txn["project_id"],
                txn["user_id"],
                txn["total"],
                txn["held"],
                txn["debt"],
                team_id=txn["team_id"],
            ),
        )
        account.user_id = txn["user_id"]  # a team's holds belong to several members
        await credits.settle(
            session,
            account,
            release=txn["hold_amount"],
            charge=ZERO,
            transaction_id=txn["id"],
            kind="hold_expired",
        )
        await events.record(
            session,
            project_id=txn["project_id"],
            type="transaction.expired",
            user_id=txn["user_id"],
            data={
                "transaction_id": txn["id"],
                "model": txn["model"],
                "hold_amount": txn["hold_amount"],
                "balance": account.available,
                **account.owner,
            },
        )
    return len(due)
