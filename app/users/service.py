"""Users: a project's end customers, each with one account."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import Principal
from app.core.freeform import require_freeform
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.teams import service as teams
from app.users import repository as repo
from app.users.exceptions import UserExists, UserHasOpenTransactions, UserNotFound
from app.users.schemas import USER_ID_PATTERN, Balance, UserCreate, UserOut, UserPatch

_VALID_ID = re.compile(USER_ID_PATTERN)


def check_path_id(user_id: str) -> str:
    """A user id from a URL: one that cannot exist is simply not found."""
    if not _VALID_ID.match(user_id):
        raise UserNotFound()
    return user_id


def _out(row: Row[Any]) -> UserOut:
    return UserOut(
        id=row.id,
        tier_id=row.tier_id,
        features=row.features or {},
        metadata=row.metadata_,
        created_at=row.created_at,
        balance=Balance(available=row.total - row.held, held=row.held, total=row.total),
    )


async def create(session: AsyncSession, project_id: uuid.UUID, body: UserCreate) -> UserOut:
    if not await _create(session, project_id, body.id, body.tier_id, body.metadata):
        raise UserExists(f"User '{body.id}' already exists.")
    return await get(session, project_id, body.id)


async def _create(
    session: AsyncSession,
    project_id: uuid.UUID,
    user_id: str,
    tier_id: str | None,
    metadata: dict[str, Any],
) -> bool:
    """Create the user with an empty account, then put it on its tier (the given one, else the
    project's default tier, if any), which grants the tier's first allocation."""
    from app.tiers import service as tiers  # noqa: PLC0415 - tiers import users too

    if tier_id is not None:
        await tiers.get(session, project_id, tier_id)  # 404 before anything is created
    created = await credits.create_account_for_user(
        session, project_id=project_id, user_id=user_id, metadata=metadata
    )
    if not created:
        return False
    tier_id = tier_id or await tiers.default_tier_id(session, project_id)
    if tier_id is not None:
        await tiers.assign(session, project_id, user_id, tier_id)
    return True


async def get(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> UserOut:
    row = await repo.get_with_balance(session, project_id, check_path_id(user_id))
    if row is None:
        raise UserNotFound()
    return _out(row)


async def list_users(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[UserOut]:
    rows = await repo.list_with_balance(session, project_id, limit=limit, after=after)
    return [_out(r) for r in rows]


async def patch(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, body: UserPatch
) -> UserOut:
    await get(session, project_id, user_id)
    if body.metadata is not None:
        merged = await repo.merge_metadata(session, project_id, user_id, body.metadata)
        if any(v is not None for v in body.metadata.values()):
            # Over the limits: the error rolls the request's transaction back, merge included.
            what = "metadata, merged into the user's,"
            require_freeform(merged, what=what, loc=("body", "metadata"))
    return await get(session, project_id, user_id)


async def delete(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> None:
    """Soft delete: the ledger is append-only, so the rows stay and the id is not reused."""
    account = await credits.lock_for_user(session, project_id, check_path_id(user_id))
    if account is None:
        raise UserNotFound()
    if await repo.has_pending_transactions(session, project_id, user_id):
        raise UserHasOpenTransactions()
    await credits.close(session, account)
    await repo.soft_delete(session, project_id, user_id)
    await teams.leave_all(session, project_id, user_id)


async def lock_existing(
    session: AsyncSession, principal: Principal, user_id: str
) -> LockedAccount | None:
    """Lock the user's account; None when there is no such user."""
    account = await credits.lock_for_user(session, principal.project_id, user_id)
    if account is not None:
        account.thresholds = principal.settings.low_balance_thresholds
    return account


async def lock_account(
    session: AsyncSession, principal: Principal, user_id: str, *, auto_create: bool
) -> LockedAccount:
    """Lock the user's account; create the user first when allowed and missing."""
    account = await lock_existing(session, principal, user_id)
    if account is not None:
        return account
    if auto_create and principal.settings.auto_create_users:
        await _create(session, principal.project_id, user_id, None, {})
        # Created here or by a concurrent request: either way it exists now (or was deleted).
        account = await lock_existing(session, principal, user_id)
        if account is not None:
            return account
    raise UserNotFound(f"User '{user_id}' does not exist.")
