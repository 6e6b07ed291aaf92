"""Promo codes: CRUD, eligibility, and the atomic claim.

Eligibility is evaluated in this fixed order; the first failing check is the reason:

1. ``promo_not_found``   -- no promo with this code (case-insensitive), or it was deleted
2. ``promo_inactive``    -- ``active`` is false
3. ``promo_not_started`` -- now < ``starts_at``
4. ``promo_expired``     -- now >= ``expires_at``
5. ``promo_exhausted``   -- ``redemptions_count`` >= ``max_redemptions``
6. ``already_claimed``   -- the user's redemptions of this promo >= ``max_per_user``
7. ``not_eligible``      -- ``eligible_user_ids`` is set and the user is not in it; or
   ``eligible_tier_ids`` is set and the user's tier is not in it; or ``new_users_only`` and the
   user was created before the promo (a user that does not exist yet counts as new)

An unknown user is evaluated as the user a claim would create: new, on the default tier.

A claim locks the user's account, then the promo row (the only lock order on these rows), so
claims of one promo are serialized and the checks above hold when the grant is written. The
account comes first so that a claim waiting for a locked (or busy) account holds nothing other
users' claims of the same promo need.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import get_args

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import Principal
from app.core.clock import utcnow
from app.core.ids import uuid7
from app.credits import service as credits
from app.credits.schemas import GrantOut
from app.db.models import Promo, PromoRedemption
from app.events import service as events
from app.promos import repository as repo
from app.promos.exceptions import (
    INELIGIBLE,
    InvalidPromoWindow,
    MaxRedemptionsBelowCount,
    PromoExists,
    PromoNotFound,
)
from app.promos.schemas import (
    CODE_PATTERN,
    ClaimOut,
    EligibilityOut,
    EligibilityReason,
    PromoCreate,
    PromoPatch,
)
from app.tiers import service as tiers
from app.users import service as users

REASONS: tuple[EligibilityReason, ...] = get_args(EligibilityReason.__value__)
_VALID_CODE = re.compile(CODE_PATTERN)


def _key(code: str) -> str | None:
    """The stored form of a code from a URL (lower-case); None for one that cannot exist."""
    return code.lower() if _VALID_CODE.fullmatch(code) else None


@dataclass(frozen=True)
class Claimant:
    """What eligibility knows of a user; ``created_at`` None = not created yet (counts as new)."""

    user_id: str
    tier_id: str | None
    created_at: datetime | None
    redemptions: int


def promo_reason(promo: Promo | None, now: datetime) -> EligibilityReason | None:
    """Checks 1-5 of the documented order: those about the promo alone."""
    if promo is None:
        return "promo_not_found"
    if not promo.active:
        return "promo_inactive"
    if promo.starts_at is not None and now < promo.starts_at:
        return "promo_not_started"
    if promo.expires_at is not None and now >= promo.expires_at:
        return "promo_expired"
    if promo.max_redemptions is not None and promo.redemptions_count >= promo.max_redemptions:
        return "promo_exhausted"
    return None


def user_reason(promo: Promo, user: Claimant) -> EligibilityReason | None:
    """Checks 6-7 of the documented order: those about the user."""
    if user.redemptions >= promo.max_per_user:
        return "already_claimed"
    if promo.eligible_user_ids and user.user_id not in promo.eligible_user_ids:
        return "not_eligible"
    if promo.eligible_tier_ids and user.tier_id not in promo.eligible_tier_ids:
        return "not_eligible"
    if promo.new_users_only and user.created_at is not None and user.created_at < promo.created_at:
        return "not_eligible"
    return None


async def _claimant(
    session: AsyncSession, project_id: uuid.UUID, promo: Promo, user_id: str
) -> Claimant:
    found = await repo.claimant(session, project_id, promo.code, user_id)
    if found.exists:
        return Claimant(user_id, found.tier_id, found.created_at, found.redemptions)
    # Evaluated as the user a claim would create: new, on the project's default tier.
    tier_id = await tiers.default_tier_id(session, project_id)
    return Claimant(user_id, tier_id, None, found.redemptions)


async def create(session: AsyncSession, project_id: uuid.UUID, body: PromoCreate) -> Promo:
    values = body.model_dump()
    values["code"] = body.code.lower()
    promo = await repo.insert_promo(session, project_id, values)
    if promo is None:
        raise PromoExists(f"Promo code '{values['code']}' is taken (deleted codes stay reserved).")
    return promo


async def get(
    session: AsyncSession, project_id: uuid.UUID, code: str, *, for_update: bool = False
) -> Promo:
    key = _key(code)
    promo = None if key is None else await repo.get(session, project_id, key, for_update=for_update)
    if promo is None:
        raise PromoNotFound()
    return promo


async def list_promos(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Promo]:
    return await repo.list_promos(session, project_id, limit=limit, after=after)


async def patch(session: AsyncSession, project_id: uuid.UUID, code: str, body: PromoPatch) -> Promo:
    """Change the fields sent; locked like a claim, so the count cannot move underneath."""
    promo = await get(session, project_id, code, for_update=True)
    changes = body.changes()
    if not changes:
        return promo
    starts_at = changes.get("starts_at", promo.starts_at)
    expires_at = changes.get("expires_at", promo.expires_at)
    if starts_at is not None and expires_at is not None and expires_at <= starts_at:
        raise InvalidPromoWindow(
            f"expires_at ({expires_at.isoformat()}) must be after starts_at "
            f"({starts_at.isoformat()})."
        )
    limit = changes.get("max_redemptions")
    if limit is not None and limit < promo.redemptions_count:
        raise MaxRedemptionsBelowCount(
            f"max_redemptions {limit} is below the {promo.redemptions_count} redemptions so far."
        )
    return await repo.update(session, project_id, promo.code, changes)


async def delete(session: AsyncSession, project_id: uuid.UUID, code: str) -> None:
    """Soft delete: redemptions and grants are kept, and the code stays reserved."""
    key = _key(code)
    if key is None or not await repo.soft_delete(session, project_id, key):
        raise PromoNotFound()


async def eligibility(
    session: AsyncSession, project_id: uuid.UUID, code: str, user_id: str
) -> EligibilityOut:
    """Evaluate the documented checks in order without side effects (nothing is created)."""
    key = _key(code)
    promo = None if key is None else await repo.get(session, project_id, key)
    reason = promo_reason(promo, utcnow())
    if reason is None and promo is not None:
        reason = user_reason(promo, await _claimant(session, project_id, promo, user_id))
    return EligibilityOut(eligible=reason is None, reason=reason)


def _refuse(reason: EligibilityReason | None) -> None:
    if reason == "promo_not_found":
        raise PromoNotFound()
    if reason is not None:
        raise INELIGIBLE[reason]()


async def claim(session: AsyncSession, principal: Principal, code: str, user_id: str) -> ClaimOut:
    """Grant the promo's credits to the user, atomically, or raise the first failing reason.

    Lock order: the user's account, then the promo row; the checks run under both locks. An
    unknown user is created when the project auto-creates users (else 404 user_not_found), but
    only after the promo's own checks passed on a plain read: a claim of a missing or closed
    promo creates nobody.
    """
    project_id = principal.project_id
    key = _key(code)
    account = await users.lock_existing(session, principal, user_id)
    if account is None:
        unlocked = None if key is None else await repo.get(session, project_id, key)
        _refuse(promo_reason(unlocked, utcnow()))
        account = await users.lock_account(session, principal, user_id, auto_create=True)
    promo = None if key is None else await repo.get(session, project_id, key, for_update=True)
    now = utcnow()
    _refuse(promo_reason(promo, now))
    assert promo is not None
    _refuse(user_reason(promo, await _claimant(session, project_id, promo, user_id)))

    days = promo.credit_expires_in_days
    grant, entry = await credits.grant(
        session,
        account,
        amount=promo.credits,
        source="promo",
        reason=f"promo {promo.code}",
        expires_at=now + timedelta(days=days) if days is not None else None,
    )
    redemption_id = uuid7()
    event = events.outbox(
        project_id=project_id,
        type="promo.claimed",
        user_id=user_id,
        data={
            "code": promo.code,
            "redemption_id": str(redemption_id),
            "grant_id": str(grant.id),
            "amount": promo.credits,
            "ledger_entry_id": entry,
            "balance": account.available,
        },
    )
    await repo.record_redemption(
        session,
        project_id,
        redemption_id=redemption_id,
        code=promo.code,
        user_id=user_id,
        grant_id=grant.id,
        carry=[event],
    )
    return ClaimOut(grant=GrantOut.model_validate(grant), balance=account.available)


async def list_redemptions(
    session: AsyncSession,
    project_id: uuid.UUID,
    code: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[PromoRedemption]:
    promo = await get(session, project_id, code)
    return await repo.list_redemptions(session, project_id, promo.code, limit=limit, after=after)
