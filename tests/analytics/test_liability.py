"""GET /v1/analytics/liability: outstanding paid credits and their value per currency
(deferred revenue), unpriced paid credits, promotional credits and debt."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from app.core.clock import utcnow
from app.core.ids import uuid7
from app.credits import service as credits
from app.db.session import Database
from tests.conftest import Project
from tests.helpers import body


async def sell(
    db: Database,
    project: Project,
    user_id: str,
    amount: str,
    cost: str,
    currency: str,
    *,
    spent: str | None = None,
    expired: bool = False,
) -> uuid.UUID:
    """A user who bought ``amount`` credits for ``cost`` and maybe spent some."""
    await project.user(user_id)
    async with db.transaction() as session:
        account = await credits.lock_for_user(session, uuid.UUID(project.id), user_id)
        assert account is not None
        grant, _ = await credits.grant(
            session,
            account,
            amount=Decimal(amount),
            source="purchase",
            category="paid",
            payment_id=uuid7(),
            cost_amount=Decimal(cost),
            cost_currency=currency,
            # Past its expiry but not yet swept: no longer owed all the same.
            expires_at=utcnow() - timedelta(seconds=1) if expired else None,
        )
    if spent is not None:
        r = await project.post(f"/v1/users/{user_id}/debits", {"amount": spent})
        assert r.status_code == 201, r.text
    return grant.id


async def liability(project: Project) -> Any:
    r = await project.get("/v1/analytics/liability")
    assert r.status_code == 200, r.text
    return body(r)


async def test_nothing_sold_nothing_owed(project: Project) -> None:
    report = await liability(project)
    assert report["paid"] == []
    assert report["paid_unpriced_credits"] == 0
    assert report["promotional_credits"] == 0
    assert report["debt"] == 0
    assert report["as_of"]


async def test_paid_credits_are_valued_at_cost_per_currency_rounded_half_up(
    project: Project, db: Database
) -> None:
    await sell(db, project, "a", "100", "10.00", "USD", spent="25")  # 75 x 0.10 = 7.50
    await sell(db, project, "b", "3", "10.00", "USD")  # 10.00
    await sell(db, project, "c", "3", "10.00", "USD", spent="2")  # 3.3333...
    await sell(db, project, "d", "8", "1.00", "EUR", spent="7")  # 0.125 -> 0.13
    await sell(db, project, "e", "1000", "500", "JPY", spent="3")  # 498.5 -> 499 (no minor unit)
    await sell(db, project, "f", "7", "1.000", "KWD", spent="6")  # 0.142857... -> 0.143
    await sell(db, project, "h", "3", "100000", "IDR", spent="2")  # 33333.33 (CLDR: 33333)
    await sell(db, project, "g", "50", "5.00", "USD", expired=True)  # expired: not owed

    report = await liability(project)

    assert report["paid"] == [
        {"currency": "EUR", "credits": 1, "value": Decimal("0.13")},
        {"currency": "IDR", "credits": 1, "value": Decimal("33333.33")},
        {"currency": "JPY", "credits": 997, "value": 499},
        {"currency": "KWD", "credits": 1, "value": Decimal("0.143")},
        # 7.50 + 10.00 + 3.3333... = 20.8333... (rounded once, on the sum)
        {"currency": "USD", "credits": 79, "value": Decimal("20.83")},
    ]
    assert report["paid_unpriced_credits"] == 0
    assert report["promotional_credits"] == 0


async def test_promotional_unpriced_and_debt_are_reported_apart(
    project: Project, db: Database
) -> None:
    await project.user("u", credits=Decimal("12.5"))  # promotional
    await project.grant("u", 20, category="paid")  # paid, price unknown
    bought = await sell(db, project, "v", "100", "10.00", "USD", spent="60")
    async with db.transaction() as session:  # refunded in full after 60 were spent
        account = await credits.lock_for_user(session, uuid.UUID(project.id), "v")
        assert account is not None
        await credits.clawback(session, account, grant_id=bought, amount=Decimal(100), reason="r")

    report = await liability(project)

    assert report["paid"] == []
    assert report["paid_unpriced_credits"] == 20
    assert report["promotional_credits"] == Decimal("12.5")
    assert report["debt"] == 60


async def test_deleted_users_and_other_projects_are_not_counted(
    project: Project, other_project: Project, db: Database
) -> None:
    await sell(db, project, "kept", "10", "1.00", "USD")
    await sell(db, project, "gone", "10", "1.00", "USD")
    assert (await project.delete("/v1/users/gone")).status_code == 204
    await sell(db, other_project, "kept", "50", "100.00", "USD")

    report = await liability(project)

    assert report["paid"] == [{"currency": "USD", "credits": 10, "value": 1}]


async def test_read_keys_see_the_liability_and_usage_keys_do_not(project: Project) -> None:
    for scopes, status in ((["read"], 200), (["usage"], 403)):
        r = await project.post("/v1/api-keys", {"name": "k", "scopes": scopes})
        assert r.status_code == 201, r.text
        key = Project(id=project.id, key=r.json()["key"], client=project.client)
        assert (await key.get("/v1/analytics/liability")).status_code == status
