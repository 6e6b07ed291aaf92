"""The demo project of `creditd serve --demo`: a key, a `_default` price and a funded user.

It lives beside the projects service rather than in it because it reaches into four domains
(projects, pricing, users, credits) for a development convenience only.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.api_keys import service as api_keys
from app.credits import service as credits
from app.events import service as events
from app.pricing import service as pricing
from app.pricing.exceptions import ModelNotFound
from app.pricing.schemas import ModelPriceIn
from app.projects import service as projects
from app.users import service as users
from app.users.exceptions import UserExists
from app.users.schemas import UserCreate

PROJECT_NAME = "demo"
# Not an id the README walk-through uses (it creates `u_1`), so both work one after the other.
USER_ID = "demo_user"
CREDITS = Decimal(100)
DEFAULT_PRICE = ModelPriceIn(input_price_per_1k=Decimal("0.5"), output_price_per_1k=Decimal("1.5"))


async def ensure(session: AsyncSession, key: str | None) -> tuple[uuid.UUID, str]:
    """The demo project of ``key`` (a new one when the key is missing or no longer valid), with
    whatever of its price and user is missing. Returns the project id and its key."""
    project_id = await api_keys.project_of(session, key) if key else None
    if project_id is None or key is None:
        project, _, key = await projects.create(session, name=PROJECT_NAME)
        project_id = project.id
    await _seed(session, project_id)
    return project_id, key


async def _seed(session: AsyncSession, project_id: uuid.UUID) -> None:
    # Only what is missing: prices or users changed by hand are left alone.
    try:
        await pricing.get(session, project_id, "_default")
    except ModelNotFound:
        await pricing.upsert(session, project_id, "_default", DEFAULT_PRICE)
    try:
        await users.create(session, project_id, UserCreate(id=USER_ID, metadata={"demo": True}))
    except UserExists:
        return
    account = await credits.lock_for_user(session, project_id, USER_ID)
    assert account is not None  # created just above, in this transaction
    grant, entry = await credits.grant(
        session, account, amount=CREDITS, source="adjustment", reason="demo credits"
    )
    await events.record(
        session,
        project_id=project_id,
        type="credits.granted",
        user_id=USER_ID,
        data={
            "grant_id": str(grant.id),
            "amount": CREDITS,
            "source": "adjustment",
            "category": grant.category,
            "ledger_entry_id": entry,
            "balance": account.available,
        },
    )
