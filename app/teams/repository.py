"""SQL for teams and their members (accounts, grants and the ledger belong to credits)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.http import render_json
from app.db.models import Account, Team, TeamMember, TeamMemberSpendCap, Transaction
from app.db.scoping import scoped_update
from app.db.session import driver

_TEAM_WITH_BALANCE = (
    Team.id,
    Team.name,
    Team.metadata_,
    Team.created_at,
    Account.total,
    Account.held,
)


def _base(project_id: uuid.UUID) -> Any:
    return (
        select(*_TEAM_WITH_BALANCE)
        .join(Account, Account.id == Team.account_id)
        .where(Team.project_id == project_id, Team.deleted_at.is_(None))
    )


async def get_with_balance(
    session: AsyncSession, project_id: uuid.UUID, team_id: str
) -> Row[Any] | None:
    return (await session.execute(_base(project_id).where(Team.id == team_id))).first()


async def list_with_balance(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Row[Any]]:
    stmt = _base(project_id)
    if after is not None:
        stmt = stmt.where(Team.id > after)
    stmt = stmt.order_by(Team.id).limit(limit + 1)
    return list((await session.execute(stmt)).all())


async def lock_team(session: AsyncSession, project_id: uuid.UUID, team_id: str) -> uuid.UUID | None:
    """Lock the live team's row (not its account): member changes and the deletion of the
    team exclude each other. Returns its account id."""
    account_id: uuid.UUID | None = await driver(session).fetchval(
        "SELECT account_id FROM teams "
        "WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL FOR NO KEY UPDATE",
        project_id,
        team_id,
    )
    return account_id


async def update(
    session: AsyncSession,
    project_id: uuid.UUID,
    team_id: str,
    *,
    name: str | None,
    set_name: bool,
    metadata: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Set the name (when ``set_name``) and merge ``metadata`` (a null value removes a key) in
    one statement; returns the merged metadata (None: no live team)."""
    changes = metadata or {}
    kept = {k: v for k, v in changes.items() if v is not None}
    removed = [k for k, v in changes.items() if v is None]
    merged: dict[str, Any] | None = await driver(session).fetchval(
        "UPDATE teams SET metadata = (metadata || $3::jsonb) - $4::text[], "
        "name = CASE WHEN $5 THEN $6 ELSE name END, updated_at = now() "
        "WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING metadata",
        project_id,
        team_id,
        render_json(kept).decode(),
        removed,
        set_name,
        name,
    )
    return merged


async def has_pending_transactions(
    session: AsyncSession, project_id: uuid.UUID, account_id: uuid.UUID
) -> bool:
    stmt = select(
        select(Transaction.id)
        .where(
            Transaction.project_id == project_id,
            Transaction.account_id == account_id,
            Transaction.status == "pending",
        )
        .exists()
    )
    return bool((await session.execute(stmt)).scalar())


async def soft_delete(session: AsyncSession, project_id: uuid.UUID, team_id: str) -> None:
    await session.execute(
        scoped_update(Team, project_id)
        .where(Team.id == team_id)
        .values(deleted_at=func.now(), updated_at=func.now())
    )
    # Members (and their caps, by cascade) go: nobody can charge a deleted team.
    await session.execute(
        delete(TeamMember).where(TeamMember.project_id == project_id, TeamMember.team_id == team_id)
    )


async def user_is_live(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> bool:
    found = await driver(session).fetchval(
        "SELECT 1 FROM users WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL",
        project_id,
        user_id,
    )
    return found is not None


async def upsert_member(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, user_id: str, role: str
) -> bool:
    """Insert or update the membership; True if it is new."""
    inserted: bool = await driver(session).fetchval(
        "INSERT INTO team_members (project_id, team_id, user_id, role) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (project_id, team_id, user_id) DO UPDATE "
        "SET role = EXCLUDED.role, updated_at = now() RETURNING (xmax = 0)",
        project_id,
        team_id,
        user_id,
        role,
    )
    return inserted


async def replace_caps(
    session: AsyncSession,
    project_id: uuid.UUID,
    team_id: str,
    user_id: str,
    caps: list[tuple[str, Decimal]],
) -> None:
    conn = driver(session)
    await conn.execute(
        "DELETE FROM team_member_spend_caps WHERE project_id = $1 AND team_id = $2 "
        "AND user_id = $3",
        project_id,
        team_id,
        user_id,
    )
    if caps:
        await conn.execute(
            'INSERT INTO team_member_spend_caps (project_id, team_id, user_id, period, "limit") '
            "SELECT $1, $2, $3, p, l FROM unnest($4::text[], $5::numeric[]) AS c(p, l)",
            project_id,
            team_id,
            user_id,
            [p for p, _ in caps],
            [limit for _, limit in caps],
        )


async def members(
    session: AsyncSession,
    project_id: uuid.UUID,
    team_id: str,
    *,
    limit: int,
    after: str | None,
    user_id: str | None = None,
) -> list[tuple[TeamMember, list[TeamMemberSpendCap]]]:
    stmt = select(TeamMember).where(
        TeamMember.project_id == project_id, TeamMember.team_id == team_id
    )
    if user_id is not None:
        stmt = stmt.where(TeamMember.user_id == user_id)
    if after is not None:
        stmt = stmt.where(TeamMember.user_id > after)
    stmt = stmt.order_by(TeamMember.user_id).limit(limit + 1)
    rows = list((await session.execute(stmt)).scalars())
    if not rows:
        return []
    caps_stmt = (
        select(TeamMemberSpendCap)
        .where(
            TeamMemberSpendCap.project_id == project_id,
            TeamMemberSpendCap.team_id == team_id,
            TeamMemberSpendCap.user_id.in_([m.user_id for m in rows]),
        )
        .order_by(TeamMemberSpendCap.period)
    )
    caps: dict[str, list[TeamMemberSpendCap]] = {}
    for cap in (await session.execute(caps_stmt)).scalars():
        caps.setdefault(cap.user_id, []).append(cap)
    return [(m, caps.get(m.user_id, [])) for m in rows]


async def delete_member(
    session: AsyncSession, project_id: uuid.UUID, team_id: str, user_id: str
) -> bool:
    found = await driver(session).fetchval(
        "DELETE FROM team_members WHERE project_id = $1 AND team_id = $2 AND user_id = $3 "
        "RETURNING 1",
        project_id,
        team_id,
        user_id,
    )
    return found is not None


async def leave_all(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> list[str]:
    """Remove the user from every team; returns the teams it left."""
    rows = await driver(session).fetch(
        "DELETE FROM team_members WHERE project_id = $1 AND user_id = $2 RETURNING team_id",
        project_id,
        user_id,
    )
    return sorted(r["team_id"] for r in rows)
