"""Grants that remember their money: categories and burn order, cost basis, clawback and
restore (refunds and disputes), and the payment checks of `creditd verify`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.clock import utcnow
from app.core.ids import uuid7
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.credits.verify import verify
from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, ledger


async def _locked(session: AsyncSession, project: Project, user_id: str) -> LockedAccount:
    account = await credits.lock_for_user(session, uuid.UUID(project.id), user_id)
    assert account is not None
    return account


async def paid_grant(
    db: Database,
    project: Project,
    user_id: str,
    amount: str,
    *,
    cost: str | None = None,
    currency: str | None = None,
    payment_id: uuid.UUID | None = None,
    expires_at: datetime | None = None,
) -> uuid.UUID:
    """What the payments service does on a successful payment."""
    async with db.transaction() as session:
        grant, _ = await credits.grant(
            session,
            await _locked(session, project, user_id),
            amount=Decimal(amount),
            source="purchase",
            ledger_kind="purchase",
            category="paid",
            payment_id=payment_id or uuid7(),
            cost_amount=None if cost is None else Decimal(cost),
            cost_currency=currency,
            expires_at=expires_at,
        )
        return grant.id


async def clawback(db: Database, project: Project, user_id: str, grant_id: uuid.UUID,
                   amount: str) -> Decimal:  # fmt: skip
    async with db.transaction() as session:
        account = await _locked(session, project, user_id)
        return await credits.clawback(
            session, account, grant_id=grant_id, amount=Decimal(amount), reason="refund"
        )


async def restore(db: Database, project: Project, user_id: str, grant_id: uuid.UUID,
                  amount: str) -> Decimal:  # fmt: skip
    async with db.transaction() as session:
        account = await _locked(session, project, user_id)
        return await credits.restore(
            session, account, grant_id=grant_id, amount=Decimal(amount), reason="dispute won"
        )


async def grants_by_id(project: Project, user_id: str) -> dict[str, Any]:
    r = await project.get(f"/v1/users/{user_id}/grants", params={"limit": 100})
    assert r.status_code == 200, r.text
    return {g["id"]: g for g in body(r)["data"]}


async def remaining(project: Project, user_id: str) -> dict[str, Decimal]:
    return {k: g["remaining"] for k, g in (await grants_by_id(project, user_id)).items()}


async def debt(db: Database, project: Project, user_id: str) -> Decimal:
    async with db.transaction() as session:
        account = await _locked(session, project, user_id)
        return account.debt


# --- categories, burn order, grants output -----------------------------------------------------


async def test_burn_order_is_expiry_then_promotional_before_paid_then_oldest(
    project: Project,
) -> None:
    await project.user("u")
    soon = (utcnow() + timedelta(days=1)).isoformat()
    later = (utcnow() + timedelta(days=30)).isoformat()
    paid_old = await project.grant("u", 10, category="paid")
    paid_expiring = await project.grant("u", 10, category="paid", expires_at=soon)
    promo_later = await project.grant("u", 10, expires_at=later)
    promo_new = await project.grant("u", 10)
    paid_new = await project.grant("u", 10, category="paid")

    r = await project.post("/v1/users/u/debits", {"amount": 35})
    assert r.status_code == 201, r.text

    left = await remaining(project, "u")
    assert left[paid_expiring["id"]] == 0  # soonest expiry, although paid
    assert left[promo_later["id"]] == 0  # expires, the rest do not
    assert left[promo_new["id"]] == 0  # promotional before paid, although newer
    assert left[paid_old["id"]] == 5  # then the oldest
    assert left[paid_new["id"]] == 10


async def test_manual_credits_are_promotional_unless_sent_as_paid(project: Project) -> None:
    await project.user("u")
    promo = await project.grant("u", 5)
    paid = await project.grant("u", 5, category="paid")
    assert promo["category"] == "promotional"
    assert paid["category"] == "paid"
    assert paid["payment_id"] is paid["cost_basis"] is paid["cost_currency"] is None
    r = await project.post("/v1/users/u/credits", {"amount": 1, "category": "bought"})
    assert r.status_code == 422


async def test_grants_show_their_payment_and_cost_basis(project: Project, db: Database) -> None:
    await project.user("u")
    payment_id = uuid7()
    grant_id = await paid_grant(
        db, project, "u", "3", cost="10.00", currency="USD", payment_id=payment_id
    )
    grant = (await grants_by_id(project, "u"))[str(grant_id)]
    assert grant["category"] == "paid"
    assert grant["payment_id"] == str(payment_id)
    assert grant["cost_basis"] == Decimal("3.333333333333")  # 12 places, half-up
    assert grant["cost_currency"] == "USD"


async def test_subscription_periods_are_paid_at_the_plan_price(project: Project) -> None:
    await project.user("u")
    plan = {"id": "pro", "name": "Pro", "price": {"amount": "20.00", "currency": "EUR"},
            "interval": "month", "credits_per_period": 1000}  # fmt: skip
    assert (await project.post("/v1/plans", plan)).status_code == 201
    r = await project.post("/v1/users/u/subscriptions", {"plan_id": "pro", "provider": "manual"})
    assert r.status_code == 201, r.text
    [grant] = (await grants_by_id(project, "u")).values()
    assert grant["source"] == "subscription"
    assert grant["category"] == "paid"
    assert grant["cost_basis"] == Decimal("0.02")
    assert grant["cost_currency"] == "EUR"
    assert grant["payment_id"] is None


# --- clawback and restore ----------------------------------------------------------------------


async def test_clawback_takes_what_its_grant_has_left_and_the_spent_rest_becomes_debt(
    project: Project, db: Database
) -> None:
    await project.user("u")
    bought = await paid_grant(db, project, "u", "100", cost="10", currency="USD")
    promo = (await project.grant("u", 50))["id"]
    other_paid = await paid_grant(db, project, "u", "30", cost="3", currency="USD")
    # 50 from the promotional grant, then 10 from the older paid grant.
    assert (await project.post("/v1/users/u/debits", {"amount": 60})).status_code == 201

    taken = await clawback(db, project, "u", bought, "100")

    assert taken == 90
    left = await remaining(project, "u")
    assert left == {str(bought): 0, promo: 0, str(other_paid): 30}  # others untouched
    assert await debt(db, project, "u") == 10
    assert await balance(project, "u") == {"available": 20, "held": 0, "total": 20}
    entry = (await ledger(project, "u"))[-1]
    assert (entry["kind"], entry["amount"], entry["grant_id"]) == ("clawback", -100, str(bought))
    await assert_ledger_consistent(db)


async def test_clawback_of_more_than_the_balance_makes_the_total_negative(
    project: Project, db: Database
) -> None:
    await project.user("u")
    bought = await paid_grant(db, project, "u", "40")
    assert (await project.post("/v1/users/u/debits", {"amount": 30})).status_code == 201
    assert await clawback(db, project, "u", bought, "40") == 10
    assert await balance(project, "u") == {"available": -30, "held": 0, "total": -30}
    await assert_ledger_consistent(db)


async def test_clawback_of_an_unspent_grant_only_lowers_that_grant(
    project: Project, db: Database
) -> None:
    await project.user("u", credits=5)
    bought = await paid_grant(db, project, "u", "100")
    assert await clawback(db, project, "u", bought, "25.5") == Decimal("25.5")
    assert (await remaining(project, "u"))[str(bought)] == Decimal("74.5")
    assert await debt(db, project, "u") == 0
    assert (await balance(project, "u"))["total"] == Decimal("79.5")
    await assert_ledger_consistent(db)


async def test_restore_pays_the_debt_first_then_refills_the_grant_never_above_its_amount(
    project: Project, db: Database
) -> None:
    await project.user("u")
    bought = await paid_grant(db, project, "u", "100")
    other = await paid_grant(db, project, "u", "30")
    assert (await project.post("/v1/users/u/debits", {"amount": 10})).status_code == 201
    await clawback(db, project, "u", bought, "100")  # 90 from the grant, 10 debt
    assert await debt(db, project, "u") == 10

    assert await restore(db, project, "u", bought, "100") == 100

    assert await debt(db, project, "u") == 0
    left = await remaining(project, "u")
    assert left == {str(bought): 90, str(other): 30}
    assert (await balance(project, "u"))["total"] == 120
    entry = (await ledger(project, "u"))[-1]
    assert (entry["kind"], entry["amount"]) == ("clawback_reversal", 100)

    # Only 10 more fit in the grant: a restore never makes credits out of nothing.
    assert await restore(db, project, "u", bought, "50") == 10
    assert (await remaining(project, "u"))[str(bought)] == 100
    assert (await balance(project, "u"))["total"] == 130
    await assert_ledger_consistent(db)


async def test_credits_restored_to_an_expired_grant_expire_again(
    project: Project, db: Database
) -> None:
    await project.user("u")
    expires = utcnow() + timedelta(minutes=1)
    bought = await paid_grant(db, project, "u", "100", expires_at=expires)
    await clawback(db, project, "u", bought, "40")
    await expire_all(db, now=expires + timedelta(seconds=1))
    assert (await balance(project, "u"))["total"] == 0

    await restore(db, project, "u", bought, "40")
    assert (await remaining(project, "u"))[str(bought)] == 40  # reopened ...
    await expire_all(db, now=expires + timedelta(seconds=2))
    assert (await remaining(project, "u"))[str(bought)] == 0  # ... and expired again
    assert (await balance(project, "u"))["total"] == 0
    kinds = [e["kind"] for e in await ledger(project, "u")]
    assert kinds == ["purchase", "clawback", "expiry", "clawback_reversal", "expiry"]
    await assert_ledger_consistent(db)


async def expire_all(db: Database, *, now: datetime) -> None:
    for _ in range(100):  # batches of accounts; other tests' grants may be due too
        async with db.transaction() as session:
            if not await credits.expire_due(session, now=now, limit=100):
                return
    raise AssertionError("expiry did not finish")


async def test_clawback_and_restore_refuse_a_grant_of_another_account(
    project: Project, db: Database
) -> None:
    await project.user("u")
    await project.user("v")
    theirs = await paid_grant(db, project, "v", "10")
    with pytest.raises(LookupError):
        await clawback(db, project, "u", theirs, "1")
    with pytest.raises(LookupError):
        await restore(db, project, "u", theirs, "1")
    with pytest.raises(ValueError, match="positive"):
        await clawback(db, project, "v", theirs, "0")
    assert (await balance(project, "v"))["total"] == 10


# --- verify: payment checks --------------------------------------------------------------------


class _RollBack(Exception):
    pass


@asynccontextmanager
async def rolled_back(db: Database) -> AsyncIterator[AsyncSession]:
    """A transaction that is always rolled back: corrupted rows are never committed."""
    with contextlib.suppress(_RollBack):
        async with db.transaction() as session:
            yield session
            raise _RollBack


async def _insert_payment(
    session: AsyncSession, project: Project, *, payment_id: uuid.UUID, grant_id: uuid.UUID | None,
    credits_granted: str, credits_clawed_back: str = "0",
) -> None:  # fmt: skip
    await session.execute(
        text(
            "INSERT INTO payments (project_id, id, user_id, kind, provider, status, amount,"
            " currency, amount_minor, credits, grant_id, credits_granted, credits_clawed_back)"
            " VALUES (:p, :id, 'u', 'top_up', 'stripe', 'succeeded', 10, 'USD', 1000, :g,"
            " :grant, :g, :c)"
        ),
        {"p": project.id, "id": payment_id, "grant": grant_id, "g": Decimal(credits_granted),
         "c": Decimal(credits_clawed_back)},
    )  # fmt: skip


async def _violations(session: AsyncSession, subject: uuid.UUID) -> set[str]:
    _, found = await verify(session)
    return {v.check for v in found if v.subject == str(subject)}


async def test_verify_is_clean_for_a_payment_clawed_back_and_restored(
    project: Project, db: Database
) -> None:
    await project.user("u")
    payment_id = uuid7()
    grant_id = await paid_grant(db, project, "u", "100", payment_id=payment_id)
    await clawback(db, project, "u", grant_id, "60")
    await restore(db, project, "u", grant_id, "20")
    async with db.transaction() as session:
        await _insert_payment(session, project, payment_id=payment_id, grant_id=grant_id,
                              credits_granted="100", credits_clawed_back="40")  # fmt: skip
        assert await _violations(session, payment_id) == set()
    await assert_ledger_consistent(db)


@pytest.mark.parametrize(
    ("granted", "clawed_back", "expected"),
    [
        # More taken back than the payment granted (and than the ledger says).
        ("100", "150", {"payment_clawbacks_within_credits_granted",
                        "payment_clawbacks_equal_ledger"}),
        # The payment record and the ledger disagree on what was taken back.
        ("100", "10", {"payment_clawbacks_equal_ledger"}),
        # The payment claims another amount than its grant got.
        ("90", "60", {"payment_credits_granted_equal_its_grant"}),
    ],
)  # fmt: skip
async def test_verify_reports_a_corrupted_payment(
    project: Project, db: Database, granted: str, clawed_back: str, expected: set[str]
) -> None:
    await project.user("u")
    payment_id = uuid7()
    grant_id = await paid_grant(db, project, "u", "100", payment_id=payment_id)
    await clawback(db, project, "u", grant_id, "60")
    async with rolled_back(db) as session:
        await _insert_payment(session, project, payment_id=payment_id, grant_id=grant_id,
                              credits_granted=granted, credits_clawed_back=clawed_back)  # fmt: skip
        assert await _violations(session, payment_id) == expected


async def test_verify_reports_a_payment_credited_twice(project: Project, db: Database) -> None:
    await project.user("u")
    payment_id = uuid7()
    grant_id = await paid_grant(db, project, "u", "100", payment_id=payment_id)
    async with rolled_back(db) as session:
        # Only corruption gets past the unique index: simulated here, and rolled back.
        await session.execute(text("DROP INDEX uq_grants_payment_id"))
        await session.execute(
            text(
                "INSERT INTO grants (id, project_id, account_id, user_id, amount, remaining,"
                " source, category, payment_id)"
                " SELECT :id, project_id, account_id, user_id, amount, 0, source, category,"
                " payment_id FROM grants WHERE id = :grant"
            ),
            {"id": uuid7(), "grant": grant_id},
        )
        await _insert_payment(session, project, payment_id=payment_id, grant_id=grant_id,
                              credits_granted="100")  # fmt: skip
        assert "payment_credited_at_most_once" in await _violations(session, payment_id)
    await assert_ledger_consistent(db)


async def test_verify_reports_a_payment_that_credited_without_a_grant(
    project: Project, db: Database
) -> None:
    payment_id = uuid7()
    async with rolled_back(db) as session:
        await _insert_payment(session, project, payment_id=payment_id, grant_id=None,
                              credits_granted="5")  # fmt: skip
        assert await _violations(session, payment_id) == {"payment_credits_granted_equal_its_grant"}
