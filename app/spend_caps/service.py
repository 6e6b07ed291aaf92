"""Spend caps: per user, per UTC day or month, optionally per model.

Enforced at start under the account lock (see app/transactions/service.py ``_admission``):
charged credits in the window (usage_daily) plus pending holds plus the new hold.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.db.models import SpendCap
from app.db.scoping import scoped_delete, scoped_select
from app.spend_caps.schemas import SpendCapIn, SpendCapOut


class SpendCapNotFound(NotFound):
    slug = "spend_cap_not_found"
    title = "No such spend cap"


def to_out(cap: SpendCap) -> SpendCapOut:
    return SpendCapOut(
        period=cap.period,
        model=cap.model or None,
        limit=cap.limit,
        action=cap.action,
        created_at=cap.created_at,
        updated_at=cap.updated_at,
    )


async def put(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, period: str, body: SpendCapIn
) -> SpendCap:
    values: dict[str, Decimal | str] = {"limit": body.limit, "action": body.action}
    stmt = (
        insert(SpendCap)
        .values(
            project_id=project_id, user_id=user_id, period=period, model=body.model or "", **values
        )
        .on_conflict_do_update(
            index_elements=[SpendCap.project_id, SpendCap.user_id, SpendCap.period, SpendCap.model],
            set_={**values, "updated_at": func.now()},
        )
        .returning(SpendCap)
    )
    return (await session.execute(stmt)).scalar_one()


async def list_caps(session: AsyncSession, project_id: uuid.UUID, user_id: str) -> list[SpendCap]:
    stmt = (
        scoped_select(SpendCap, project_id)
        .where(SpendCap.user_id == user_id)
        .order_by(SpendCap.period, SpendCap.model)
    )
    return list((await session.execute(stmt)).scalars())


async def delete(
    session: AsyncSession, project_id: uuid.UUID, user_id: str, period: str, model: str | None
) -> None:
    result = await session.execute(
        scoped_delete(SpendCap, project_id).where(
            SpendCap.user_id == user_id, SpendCap.period == period, SpendCap.model == (model or "")
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise SpendCapNotFound()
