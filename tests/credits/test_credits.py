"""Grants, burn order, debt, debits and the ledger."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text

from app.core.clock import utcnow
from app.db.session import Database
from tests.conftest import Project
from tests.helpers import balance, body, complete, ledger, start


async def test_grant_returns_the_grant_and_the_new_balance(project: Project) -> None:
    await project.user("u")
    expires = (utcnow() + timedelta(days=3)).isoformat()
    r = await project.post(
        "/v1/users/u/credits",
        {"amount": Decimal("12.345678"), "reason": "welcome", "expires_at": expires},
    )
    assert r.status_code == 201
    grant = body(r)
    assert grant["amount"] == Decimal("12.345678")
    assert grant["remaining"] == Decimal("12.345678")
    assert grant["source"] == "adjustment"
    assert grant["balance"] == Decimal("12.345678")
    assert grant["expires_at"] is not None


async def test_grant_to_unknown_user_is_404(project: Project) -> None:
    r = await project.post("/v1/users/ghost/credits", {"amount": 1})
    assert r.status_code == 404
    assert r.json()["code"] == "user_not_found"


async def test_grant_expiring_in_the_past_is_422(project: Project) -> None:
    await project.user("u")
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    r = await project.post("/v1/users/u/credits", {"amount": 1, "expires_at": past})
    assert r.status_code == 422
    assert await balance(project, "u") == {"available": 0, "held": 0, "total": 0}


async def test_charges_burn_soonest_expiry_first_then_oldest(project: Project) -> None:
    await project.price("_default", 1000, 0)  # 1 credit per input token
    await project.user("u")
    later = await project.grant("u", 10, expires_at=(utcnow() + timedelta(days=30)).isoformat())
    forever_old = await project.grant("u", 10)
    soon = await project.grant("u", 10, expires_at=(utcnow() + timedelta(days=1)).isoformat())
    forever_new = await project.grant("u", 10)

    txn = await start(project, "u", inp=1)
    await complete(project, txn["transaction_id"], inp=25)

    grants = {
        g["id"]: g["remaining"] for g in body(await project.get("/v1/users/u/grants"))["data"]
    }
    assert grants[soon["id"]] == 0
    assert grants[later["id"]] == 0
    assert grants[forever_old["id"]] == 5
    assert grants[forever_new["id"]] == 10


async def test_overspend_becomes_debt_that_the_next_grant_pays_first(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=5)
    txn = await start(project, "u", inp=5)
    await complete(project, txn["transaction_id"], inp=8)
    assert (await balance(project, "u"))["total"] == -3
    grant = await project.grant("u", 10)
    assert grant["remaining"] == 7
    assert grant["balance"] == 7


async def test_debit_removes_available_credits(project: Project) -> None:
    await project.user("u", credits=10)
    r = await project.post("/v1/users/u/debits", {"amount": Decimal("2.5"), "reason": "manual"})
    assert r.status_code == 201
    result = body(r)
    assert result["amount"] == Decimal("2.5")
    assert result["balance"] == Decimal("7.5")
    entries = await ledger(project, "u")
    assert entries[-1]["id"] == result["ledger_entry_id"]
    assert entries[-1]["kind"] == "debit"
    assert entries[-1]["amount"] == Decimal("-2.5")


async def test_debit_more_than_available_is_402_and_changes_nothing(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=10)
    await start(project, "u", inp=6)  # 6 held → 4 available
    r = await project.post("/v1/users/u/debits", {"amount": 5})
    assert r.status_code == 402
    assert r.json()["code"] == "insufficient_credits"
    assert await balance(project, "u") == {"available": 4, "held": 6, "total": 10}


async def test_ledger_records_every_change_with_running_balances(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=10)
    txn = await start(project, "u", inp=4)
    await complete(project, txn["transaction_id"], inp=3)
    entries = await ledger(project, "u")
    assert [(e["kind"], e["amount"], e["held_amount"], e["balance_after"]) for e in entries] == [
        ("grant", 10, 0, 10),
        ("hold", 0, 4, 6),
        ("usage", -3, -4, 7),
    ]
    assert entries[-1]["transaction_id"] == txn["transaction_id"]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)


async def test_ledger_pagination_uses_integer_cursors(project: Project) -> None:
    await project.user("u")
    for _ in range(3):
        await project.grant("u", 1)
    page = body(await project.get("/v1/users/u/ledger", params={"limit": 2}))
    assert page["has_more"] is True
    rest = body(
        await project.get("/v1/users/u/ledger", params={"starting_after": page["next_cursor"]})
    )
    assert len(rest["data"]) == 1
    bad = await project.get("/v1/users/u/ledger", params={"starting_after": "abc"})
    assert bad.status_code == 422


async def test_ledger_rows_cannot_be_changed_in_place(project: Project, db: Database) -> None:
    """The ledger is append-only by construction: ids are generated ALWAYS, rows only inserted."""
    await project.user("u", credits=1)
    async with db.transaction() as session:
        identity = await session.execute(
            text(
                "SELECT is_identity, identity_generation FROM information_schema.columns "
                "WHERE table_name = 'ledger_entries' AND column_name = 'id'"
            )
        )
        assert identity.one() == ("YES", "ALWAYS")
