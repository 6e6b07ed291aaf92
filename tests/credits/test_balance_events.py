"""balance.low / balance.depleted / balance.recovered: one event per crossing, decided by the
change's own before and after (``app.credits.service.balance_events``).

- low: available falls from >= a threshold to below it;
- depleted: available falls from > 0 to <= 0;
- recovered: available rises from below a threshold to at or above it, or from <= 0 to > 0
  (one event per change, listing the thresholds it crossed, possibly none).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from app.core.clock import utcnow
from app.credits import service as credits
from app.credits.repository import LockedAccount
from app.db.session import Database
from app.workers.runner import sweep_holds_once
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import body, complete, start

# (type, previous_balance, balance, thresholds or None); amounts compare with ints.
Seen = tuple[Any, ...]


async def balance_events(project: Project, user_id: str = "u") -> list[Seen]:
    """The user's balance events, oldest first."""
    r = await project.get("/v1/events", params={"user_id": user_id, "limit": 100})
    assert r.status_code == 200, r.text
    found = []
    for event in body(r)["data"]:
        if event["type"].startswith("balance."):
            data = event["data"]
            found.append(
                (
                    event["type"].removeprefix("balance."),
                    data["previous_balance"],
                    data["balance"],
                    data.get("thresholds"),
                )
            )
    return found


async def thresholds(project: Project, *values: int) -> None:
    r = await project.patch("/v1/project", {"settings": {"low_balance_thresholds": list(values)}})
    assert r.status_code == 200, r.text


async def debit(project: Project, amount: Any, user_id: str = "u") -> None:
    r = await project.post(f"/v1/users/{user_id}/debits", {"amount": amount})
    assert r.status_code == 201, r.text


async def usage(project: Project, credits_: int, user_id: str = "u") -> None:
    """Charge ``credits_`` in full (the `_default` price: 1 credit per input token)."""
    payload = {"user_id": user_id, "model": "m", "tokens": {"input_tokens": credits_}}
    r = await project.post("/v1/usage", payload)
    assert r.status_code == 201, r.text


async def priced(project: Project) -> None:
    await project.price("_default", 1000, 0)


async def test_depleted_fires_once_when_available_falls_from_above_zero_to_zero_or_below(
    project: Project, db: Database
) -> None:
    await priced(project)
    await project.user("u", credits=10)
    await debit(project, 4)  # 10 -> 6
    await debit(project, 6)  # 6 -> 0: depleted
    await usage(project, 5)  # 0 -> -5: already depleted, no second event
    assert await balance_events(project) == [
        ("recovered", 0, 10, []),  # a first grant lifts a new user from 0
        ("depleted", 6, 0, None),
    ]
    await assert_ledger_consistent(db)


async def test_recovered_fires_once_when_available_rises_from_zero_or_below_to_above_zero(
    project: Project,
) -> None:
    await priced(project)
    await project.user("u", credits=1)
    await usage(project, 6)  # 1 -> -5: depleted
    await project.grant("u", 3)  # -5 -> -2: still depleted
    await project.grant("u", 4)  # -2 -> 2: recovered
    await project.grant("u", 1)  # 2 -> 3: nothing
    assert await balance_events(project) == [
        ("recovered", 0, 1, []),
        ("depleted", 1, -5, None),
        ("recovered", -2, 2, []),
    ]


async def test_low_and_recovered_fire_once_per_crossing_of_each_threshold(
    project: Project,
) -> None:
    await thresholds(project, 50, 10)
    await project.user("u", credits=5)  # 0 -> 5: out of depletion, below both thresholds
    await project.grant("u", 4)  # 5 -> 9
    await project.grant("u", 1)  # 9 -> 10: at the threshold is not low any more
    await project.grant("u", 100)  # 10 -> 110
    await project.grant("u", 10)  # 110 -> 120
    await debit(project, 110)  # 120 -> 10: below 50, not below 10
    await debit(project, 1)  # 10 -> 9: below 10
    await debit(project, 1)  # 9 -> 8
    await project.grant("u", 2)  # 8 -> 10: re-armed
    await debit(project, 1)  # 10 -> 9: low again
    assert await balance_events(project) == [
        ("recovered", 0, 5, []),
        ("recovered", 9, 10, [10]),
        ("recovered", 10, 110, [50]),
        ("low", 120, 10, [50]),
        ("low", 10, 9, [10]),
        ("recovered", 8, 10, [10]),
        ("low", 10, 9, [10]),
    ]


async def test_one_change_across_several_levels_fires_one_event_of_each_kind(
    project: Project,
) -> None:
    await priced(project)
    await thresholds(project, 10, 50)
    await project.user("u", credits=95)  # 0 -> 95: crosses 0, 10 and 50 at once
    await usage(project, 200)  # 95 -> -105: below 50, 10 and 0 at once
    events = await balance_events(project)
    assert events[0] == ("recovered", 0, 95, [50, 10])
    # Written by one statement: their relative order is not meaningful.
    assert sorted(events[1:]) == [("depleted", 95, -105, None), ("low", 95, -105, [50, 10])]


async def test_a_hold_taking_the_last_credits_depletes_and_its_settlement_recovers(
    project: Project,
) -> None:
    await priced(project)
    await project.user("u", credits=10)
    txn = await start(project, "u", inp=10)  # hold 10: available 10 -> 0
    r = await complete(project, txn["transaction_id"], inp=4)  # charge 4: 0 -> 6
    assert r.status_code == 200, r.text
    assert await balance_events(project) == [
        ("recovered", 0, 10, []),
        ("depleted", 10, 0, None),
        ("recovered", 0, 6, []),
    ]


async def test_no_balance_event_without_a_crossing(project: Project) -> None:
    await priced(project)
    await thresholds(project, 10)
    await project.user("u", credits=100)
    for _ in range(3):
        txn = await start(project, "u", inp=30)  # 100 -> 70 (or less) and back above 10
        r = await complete(project, txn["transaction_id"], inp=20)
        assert r.status_code == 200, r.text
        await debit(project, 1)
    await project.grant("u", 5)
    assert await balance_events(project) == [("recovered", 0, 100, [10])]


def _account(total: int, held: int = 0, known: list[int] | None = None) -> LockedAccount:
    zero = Decimal(0)
    account = LockedAccount(uuid.uuid4(), uuid.uuid4(), "u", Decimal(total), Decimal(held), zero)
    if known is not None:
        account.thresholds = [Decimal(t) for t in known]
    return account


def test_with_known_thresholds_a_change_without_crossing_carries_no_write() -> None:
    # The request paths (start, complete) know the thresholds from the cached settings: a
    # change that crosses nothing adds nothing to its statement.
    for previous, total, held in ((100, 70, 0), (70, 100, 0), (100, 100, 30), (-5, -2, 0)):
        assert credits.balance_events(_account(total, held, [10, 50]), Decimal(previous)) == []
    [write] = credits.balance_events(_account(40, 0, [10, 50]), Decimal(60))
    assert "INSERT INTO events" in write.sql
    assert "projects" not in write.sql  # the decision was made in Python: no settings read
    assert write.args[2] == "balance.low"


def test_without_known_thresholds_the_statement_decides() -> None:
    # Workers do not know the project's thresholds: the carried write reads them.
    [low] = credits.balance_events(_account(40), Decimal(60))
    [recovered] = credits.balance_events(_account(60), Decimal(40))
    assert "low_balance_thresholds" in low.sql
    assert "'balance.low'" in low.sql
    assert "low_balance_thresholds" in recovered.sql
    assert "'balance.recovered'" in recovered.sql
    # Depletion needs no threshold: decided in Python on every path.
    depleted, low_too = credits.balance_events(_account(0), Decimal(5))
    assert depleted.args[2] == "balance.depleted"
    assert "'balance.low'" in low_too.sql


async def _expire_hold(db: Database, txn_id: str) -> None:
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE transactions SET expires_at = now() - interval '1 second' WHERE id = :t"),
            {"t": txn_id},
        )
    assert await sweep_holds_once(db, batch_size=100) >= 1


async def test_workers_emit_the_same_events_as_the_request_paths(
    project: Project, db: Database
) -> None:
    # The sweeper and the expiry job change balances without the thresholds at hand: the
    # statement decides, with the same rules and the same data.
    await priced(project)
    await thresholds(project, 50)
    await project.user("u", credits=60)  # 0 -> 60
    txn = await start(project, "u", inp=20)  # 60 -> 40: low
    await _expire_hold(db, txn["transaction_id"])  # released by the sweeper: 40 -> 60
    await project.user("v", credits=20)  # 0 -> 20
    txn = await start(project, "v", inp=20)  # 20 -> 0: depleted
    await _expire_hold(db, txn["transaction_id"])  # 0 -> 20: out of depletion
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    await project.grant("v", 40, expires_at=soon)  # 20 -> 60
    async with db.transaction() as session:
        await credits.expire_due(session, now=utcnow() + timedelta(hours=2), limit=1000)
    # expiry: 60 -> 20, below 50
    assert await balance_events(project, "u") == [
        ("recovered", 0, 60, [50]),
        ("low", 60, 40, [50]),
        ("recovered", 40, 60, [50]),  # the sweeper's
    ]
    assert await balance_events(project, "v") == [
        ("recovered", 0, 20, []),
        ("depleted", 20, 0, None),
        ("recovered", 0, 20, []),  # the sweeper's
        ("recovered", 20, 60, [50]),
        ("low", 60, 20, [50]),  # the expiry job's
    ]
    await assert_ledger_consistent(db)
