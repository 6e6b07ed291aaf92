"""Grant expiry, expiring-soon notices and low-balance events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

from app.core.clock import utcnow
from app.credits import service as credits
from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, complete, ledger, start


async def expire(
    db: Database, days_ahead: float, *, dry_run: bool = False
) -> list[credits.Expired]:
    async with db.transaction() as session:
        return await credits.expire_due(
            session, now=utcnow() + timedelta(days=days_ahead), limit=1000, dry_run=dry_run
        )


def mine(found: list[credits.Expired], project: Project) -> list[credits.Expired]:
    return [e for e in found if str(e.project_id) == project.id]


async def test_worked_example_expiry_removes_only_the_unspent_remainder(
    project: Project, db: Database
) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u")
    await project.grant("u", 100, expires_at=(utcnow() + timedelta(days=1)).isoformat())
    await project.grant("u", 100)
    txn = await start(project, "u", inp=150)
    await complete(project, txn["transaction_id"], inp=150)
    found = mine(await expire(db, 2), project)
    assert [e.amount for e in found] == [0]
    assert (await balance(project, "u"))["available"] == 50
    expiry = [e for e in await ledger(project, "u") if e["kind"] == "expiry"]
    assert [e["amount"] for e in expiry] == [0]
    await assert_ledger_consistent(db)


async def test_expiry_removes_what_is_left_and_emits_an_event(
    project: Project, db: Database
) -> None:
    await project.user("u")
    grant = await project.grant("u", 100, expires_at=(utcnow() + timedelta(hours=1)).isoformat())
    await project.grant("u", 5)
    await project.post("/v1/users/u/debits", {"amount": 30})
    assert mine(await expire(db, 0), project) == []  # not due yet
    found = mine(await expire(db, 1), project)
    assert [(e.grant_id, e.amount) for e in found] == [(grant["id"], Decimal(70))] or [
        (str(e.grant_id), e.amount) for e in found
    ] == [(grant["id"], Decimal(70))]
    assert (await balance(project, "u"))["total"] == 5
    events = body(await project.get("/v1/events", params={"type": "credits.expired"}))["data"]
    assert [(e["data"]["amount"], e["data"]["balance"]) for e in events] == [(70, 5)]
    assert mine(await expire(db, 1), project) == [], "a grant expires once"
    await assert_ledger_consistent(db)


async def test_two_expiry_workers_expire_each_grant_once(project: Project, db: Database) -> None:
    soon = (utcnow() + timedelta(minutes=5)).isoformat()
    for i in range(15):
        await project.user(f"u{i}")
        await project.grant(f"u{i}", 10, expires_at=soon)
    first, second = await asyncio.gather(expire(db, 1), expire(db, 1))
    grants = [e.grant_id for e in mine(first, project) + mine(second, project)]
    assert len(grants) == len(set(grants))
    leftovers = mine(await expire(db, 1), project)
    assert len(grants) + len(leftovers) == 15
    for i in range(15):
        assert (await balance(project, f"u{i}"))["total"] == 0
    await assert_ledger_consistent(db)


async def test_dry_run_lists_without_changing_anything(project: Project, db: Database) -> None:
    await project.user("u")
    await project.grant("u", 10, expires_at=(utcnow() + timedelta(hours=1)).isoformat())
    found = mine(await expire(db, 1, dry_run=True), project)
    assert [e.amount for e in found] == [10]
    assert (await balance(project, "u"))["total"] == 10
    assert [e["kind"] for e in await ledger(project, "u")] == ["grant"]


async def test_expire_cli_dry_run_prints_due_grants(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "expire", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("grant(s) would expire")


async def test_credits_expiring_within_seven_days_are_announced_once(
    project: Project, db: Database
) -> None:
    await project.user("u")
    await project.grant("u", 10, expires_at=(utcnow() + timedelta(days=3)).isoformat())
    await project.grant("u", 10, expires_at=(utcnow() + timedelta(days=30)).isoformat())
    for _ in range(2):
        async with db.transaction() as session:
            await credits.announce_expiring(session, now=utcnow(), days=7, limit=1000)
    events = body(await project.get("/v1/events", params={"type": "credits.expiring"}))["data"]
    assert [e["data"]["remaining"] for e in events] == [10]


async def test_low_balance_event_fires_once_per_downward_crossing(project: Project) -> None:
    await project.patch("/v1/project", {"settings": {"low_balance_thresholds": [100, 10]}})
    await project.user("u", credits=150)

    async def debit(amount: int) -> None:
        assert (await project.post("/v1/users/u/debits", {"amount": amount})).status_code == 201

    async def lows() -> list[dict[str, object]]:
        found = body(await project.get("/v1/events", params={"type": "balance.low"}))["data"]
        return [e["data"] for e in found]

    await debit(60)  # 150 -> 90: crosses 100
    await debit(5)  # 90 -> 85: no crossing
    assert [(d["thresholds"], d["balance"]) for d in await lows()] == [([100], 90)]
    await project.grant("u", 50)  # 135: re-armed
    await debit(130)  # 135 -> 5: crosses 100 and 10 at once
    assert [(d["thresholds"], d["balance"]) for d in await lows()] == [([100], 90), ([100, 10], 5)]
