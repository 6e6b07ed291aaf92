"""Teams: shared balances. A team owns one account that its members charge through the usage
endpoints (``team_id``); grants, debits and the ledger of that account go through credits like
a user's. Member caps are checked by the transactions service under the team account's lock.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import Principal
from app.core.freeform import require_freeform
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db.models import TeamMember, TeamMemberSpendCap
from app.events import service as events
from app.teams import repository as repo
from app.teams.exceptions import (
    TeamExists,
    TeamHasOpenTransactions,
    TeamMemberNotFound,
    TeamNotFound,
)
from app.teams.schemas import (
    TEAM_ID_PATTERN,
    MemberCapOut,
    MemberIn,
    MemberOut,
    TeamCreate,
    TeamOut,
    TeamPatch,
)
from app.users.exceptions import UserNotFound
from app.users.schemas import USER_ID_PATTERN, Balance

_VALID_ID = re.compile(TEAM_ID_PATTERN)
_VALID_USER_ID = re.compile(USER_ID_PATTERN)


def check_path_id(team_id: str) -> str:
    """A team id from a URL: one that cannot exist is simply not found."""
    if not _VALID_ID.match(team_id):
        raise TeamNotFound()
    return team_id


def _out(row: Row[Any]) -> TeamOut:
    return TeamOut(
        id=row.id,
        name=row.name,
        metadata=row.metadata_,
        created_at=row.created_at,
        balance=Balance(available=row.total - row.held, held=row.held, total=row.total),
    )


def _member_out(member: TeamMember, caps: list[TeamMemberSpendCap]) -> MemberOut:
    return MemberOut(
        team_id=member.team_id,
        user_id=member.user_id,
        role=member.role,
        spend_caps=[MemberCapOut.model_validate(c, from_attributes=True) for c in caps],
        created_at=member.created_at,
        updated_at=member.updated_at,
    )


async def create(session: AsyncSession, principal: Principal, body: TeamCreate) -> TeamOut:
    created = await credits.create_account_for_team(
        session,
        project_id=principal.project_id,
        team_id=body.id,
        name=body.name,
        metadata=body.metadata,
    )
    if not created:
        raise TeamExists(f"Team '{body.id}' already exists (or existed).")
    await events.record(
        session,
        project_id=principal.project_id,
        type="team.created",
        data={"team_id": body.id, "name": body.name},
    )
    return await get(session, principal.project_id, body.id)


async def get(session: AsyncSession, project_id: uuid.UUID, team_id: str) -> TeamOut:
    row = await repo.get_with_balance(session, project_id, check_path_id(team_id))
    if row is None:
        raise TeamNotFound()
    return _out(row)


async def list_teams(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[TeamOut]:
    rows = await repo.list_with_balance(session, project_id, limit=limit, after=after)
    return [_out(r) for r in rows]


async def patch(
    session: AsyncSession, principal: Principal, team_id: str, body: TeamPatch
) -> TeamOut:
    set_name = "name" in body.model_fields_set
    merged = await repo.update(
        session,
        principal.project_id,
        check_path_id(team_id),
        name=body.name,
        set_name=set_name,
        metadata=body.metadata,
    )
    if merged is None:
        raise TeamNotFound()
    if body.metadata and any(v is not None for v in body.metadata.values()):
        what = "metadata, merged into the team's,"
        require_freeform(merged, what=what, loc=("body", "metadata"))
    out = await get(session, principal.project_id, team_id)
    await events.record(
        session,
        project_id=principal.project_id,
        type="team.updated",
        data={"team_id": out.id, "name": out.name},
    )
    return out


async def delete(session: AsyncSession, principal: Principal, team_id: str) -> None:
    """Soft delete, like a user's: the account is closed (its ledger stays, its balance is
    frozen), the members leave, and the id is not reused."""
    team_id = check_path_id(team_id)
    if await repo.lock_team(session, principal.project_id, team_id) is None:
        raise TeamNotFound()
    account = await credits.lock_for_team(session, principal.project_id, team_id)
    if account is None:  # pragma: no cover - a live team's account is open
        raise TeamNotFound()
    if await repo.has_pending_transactions(session, principal.project_id, account.id):
        raise TeamHasOpenTransactions()
    await credits.close(session, account)
    await repo.soft_delete(session, principal.project_id, team_id)
    await events.record(
        session,
        project_id=principal.project_id,
        type="team.deleted",
        data={"team_id": team_id, "balance": account.available},
    )


async def lock_account(session: AsyncSession, principal: Principal, team_id: str) -> LockedAccount:
    """Lock the team's account for a team-level change (grant, debit): no member recorded."""
    account = await credits.lock_for_team(session, principal.project_id, check_path_id(team_id))
    if account is None:
        raise TeamNotFound()
    account.thresholds = principal.settings.low_balance_thresholds
    return account


async def put_member(
    session: AsyncSession, principal: Principal, team_id: str, user_id: str, body: MemberIn
) -> tuple[MemberOut, bool]:
    """Add the (existing) user to the team or change its role and caps; (member, created)."""
    project_id = principal.project_id
    team_id = check_path_id(team_id)
    if await repo.lock_team(session, project_id, team_id) is None:
        raise TeamNotFound()
    if not _VALID_USER_ID.match(user_id) or not await repo.user_is_live(
        session, project_id, user_id
    ):
        raise UserNotFound(f"User '{user_id}' does not exist.")
    created = await repo.upsert_member(session, project_id, team_id, user_id, body.role)
    caps: list[tuple[str, Decimal]] = [(c.period, c.limit) for c in body.spend_caps]
    await repo.replace_caps(session, project_id, team_id, user_id, caps)
    out = await get_member(session, project_id, team_id, user_id)
    await events.record(
        session,
        project_id=project_id,
        type="team.member_added" if created else "team.member_updated",
        user_id=user_id,
        data={
            "team_id": team_id,
            "user_id": user_id,
            "role": out.role,
            "spend_caps": [c.model_dump() for c in out.spend_caps],
        },
    )
    return out, created


async def get_member(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, user_id: str
) -> MemberOut:
    found = await repo.members(session, project_id, team_id, limit=1, after=None, user_id=user_id)
    if not found:
        raise TeamMemberNotFound()
    return _member_out(*found[0])


async def list_members(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, *, limit: int, after: str | None
) -> list[MemberOut]:
    await get(session, project_id, team_id)
    rows = await repo.members(session, project_id, team_id, limit=limit, after=after)
    return [_member_out(m, caps) for m, caps in rows]


async def remove_member(
    session: AsyncSession, principal: Principal, team_id: str, user_id: str
) -> None:
    project_id = principal.project_id
    team_id = check_path_id(team_id)
    if await repo.lock_team(session, project_id, team_id) is None:
        raise TeamNotFound()
    if not await repo.delete_member(session, project_id, team_id, user_id):
        raise TeamMemberNotFound()
    await _removed(session, project_id, team_id, user_id, "removed")


async def _removed(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, user_id: str, reason: str
) -> None:
    await events.record(
        session,
        project_id=project_id,
        type="team.member_removed",
        user_id=user_id,
        data={"team_id": team_id, "user_id": user_id, "reason": reason},
    )


async def leave_all(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> None:
    """A deleted user leaves every team it belonged to."""
    for team_id in await repo.leave_all(session, project_id, user_id):
        await _removed(session, project_id, team_id, user_id, "user_deleted")
