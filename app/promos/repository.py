"""All promo SQL. Every statement is scoped to one project; codes arrive lower-cased."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import writes
from app.db.models import Promo, PromoRedemption
from app.db.scoping import scoped_select, scoped_update
from app.db.session import driver
from app.db.writes import Write


def _live(project_id: uuid.UUID, code: str) -> Any:
    return scoped_select(Promo, project_id).where(Promo.code == code, Promo.deleted_at.is_(None))


async def insert_promo(
    session: AsyncSession, project_id: uuid.UUID, values: dict[str, Any]
) -> Promo | None:
    """Insert a promo; None if the code exists (deleted codes included: they stay reserved)."""
    stmt = (
        insert(Promo)
        .values(project_id=project_id, **values)
        .on_conflict_do_nothing(index_elements=[Promo.project_id, Promo.code])
        .returning(Promo)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get(
    session: AsyncSession, project_id: uuid.UUID, code: str, *, for_update: bool = False
) -> Promo | None:
    """A live (not deleted) promo; ``for_update`` locks its row until the transaction ends."""
    stmt = _live(project_id, code).execution_options(populate_existing=True)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_promos(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: str | None
) -> list[Promo]:
    stmt = scoped_select(Promo, project_id).where(Promo.deleted_at.is_(None))
    if after is not None:
        stmt = stmt.where(Promo.code > after)
    stmt = stmt.order_by(Promo.code).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())


async def update(
    session: AsyncSession, project_id: uuid.UUID, code: str, values: dict[str, Any]
) -> Promo:
    stmt = (
        scoped_update(Promo, project_id)
        .where(Promo.code == code)
        .values(**values, updated_at=func.now())
        .returning(Promo)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


async def soft_delete(session: AsyncSession, project_id: uuid.UUID, code: str) -> bool:
    stmt = (
        scoped_update(Promo, project_id)
        .where(Promo.code == code, Promo.deleted_at.is_(None))
        .values(deleted_at=func.now(), updated_at=func.now())
        .returning(Promo.code)
    )
    return (await session.execute(stmt)).first() is not None


# One round trip for what eligibility needs to know about a user (a row even for an unknown
# user). Run after the promo's lock is taken: a fresh statement, so under READ COMMITTED it sees
# every redemption committed by the claims it waited for.
_CLAIMANT = """
    SELECT (SELECT count(*) FROM promo_redemptions
            WHERE project_id = $1 AND code = $2 AND user_id = $3) AS redemptions,
           u.created_at IS NOT NULL AS found, u.tier_id, u.created_at
    FROM (SELECT 1) AS one
    LEFT JOIN users u ON u.project_id = $1 AND u.id = $3 AND u.deleted_at IS NULL
"""
_INSERT_REDEMPTION = """
    INSERT INTO promo_redemptions (project_id, id, code, user_id, grant_id)
    VALUES ($1, $2, $3, $4, $5)
"""
# updated_at tracks the promo's configuration, not its claims.
_COUNT_REDEMPTION = """
    UPDATE promos SET redemptions_count = redemptions_count + 1
    WHERE project_id = $1 AND code = $2
"""


@dataclass(frozen=True)
class ClaimantRow:
    redemptions: int
    exists: bool
    tier_id: str | None
    created_at: datetime | None


async def claimant(
    session: AsyncSession, project_id: uuid.UUID, code: str, user_id: str
) -> ClaimantRow:
    """The user's redemptions of the promo, and (if the user exists) its tier and creation."""
    row = await driver(session).fetchrow(_CLAIMANT, project_id, code, user_id)
    return ClaimantRow(row["redemptions"], row["found"], row["tier_id"], row["created_at"])


async def record_redemption(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    redemption_id: uuid.UUID,
    code: str,
    user_id: str,
    grant_id: uuid.UUID,
    carry: Sequence[Write] = (),
) -> None:
    """Insert the redemption and count it on the promo (plus ``carry``), in one statement."""
    await writes.run(
        session,
        [
            Write(_INSERT_REDEMPTION, (project_id, redemption_id, code, user_id, grant_id)),
            Write(_COUNT_REDEMPTION, (project_id, code)),
            *carry,
        ],
    )


async def list_redemptions(
    session: AsyncSession,
    project_id: uuid.UUID,
    code: str,
    *,
    limit: int,
    after: uuid.UUID | None,
) -> list[PromoRedemption]:
    stmt = scoped_select(PromoRedemption, project_id).where(PromoRedemption.code == code)
    if after is not None:
        stmt = stmt.where(PromoRedemption.id > after)
    stmt = stmt.order_by(PromoRedemption.id).limit(limit + 1)
    return list((await session.execute(stmt)).scalars())
