"""The refill worker: reset and rollover, catch-up, several workers, a crash mid-batch."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from app.core.clock import utcnow
from app.credits import service as credits_service
from app.db.session import Database
from app.tiers import service as tiers
from app.workers.runner import refill_tiers_once
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, complete, ledger, start
from tests.tiers.test_tiers import make_tier


async def age_assignment(db: Database, project: Project, user_id: str, days: int) -> None:
    """Pretend the user was put on its tier ``days`` ago (with its first allocation) and the
    refill is due."""
    shift = {"d": days, "p": project.id, "u": user_id}
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE users SET tier_assigned_at = tier_assigned_at - make_interval(days => :d), "
                "next_refill_at = now() - interval '1 second' WHERE project_id = :p AND id = :u"
            ),
            shift,
        )
        await session.execute(
            text(
                "UPDATE allocations SET period_start = period_start - make_interval(days => :d) "
                "WHERE project_id = :p AND user_id = :u"
            ),
            shift,
        )
        await session.execute(
            text(
                "UPDATE grants SET expires_at = expires_at - make_interval(days => :d) "
                "WHERE project_id = :p AND user_id = :u AND source = 'tier'"
            ),
            shift,
        )


async def spend(project: Project, user_id: str, amount: int) -> None:
    txn = await start(project, user_id, inp=amount)
    assert txn["continue"] is True
    assert (await complete(project, txn["transaction_id"], inp=amount)).status_code == 200


async def allocations(db: Database, project: Project, user_id: str) -> int:
    async with db.transaction() as session:
        found = await session.execute(
            text("SELECT count(*) FROM allocations WHERE project_id = :p AND user_id = :u"),
            {"p": project.id, "u": user_id},
        )
        return int(found.scalar_one())


@pytest.fixture
async def priced(project: Project) -> Project:
    await project.price("_default", 1000, 0)  # 1 credit per input token
    return project


async def test_reset_refill_on_day_31_gives_a_fresh_allocation_not_a_sum(
    priced: Project, db: Database
) -> None:
    await make_tier(priced, "free", credits=500, refill_interval="month", refill_mode="reset")
    await priced.post("/v1/users", {"id": "u", "tier_id": "free"})
    await spend(priced, "u", 200)
    await age_assignment(db, priced, "u", 31)
    assert await refill_tiers_once(db, batch_size=10) >= 1
    assert (await balance(priced, "u"))["available"] == 500
    assert [e["kind"] for e in await ledger(priced, "u")][-2:] == ["tier_reset", "grant"]
    await assert_ledger_consistent(db)


async def test_rollover_refill_carries_unused_credits_up_to_the_cap(
    priced: Project, db: Database
) -> None:
    await make_tier(
        priced, "r", credits=500, refill_interval="month", refill_mode="rollover", rollover_cap=600
    )
    await priced.post("/v1/users", {"id": "u", "tier_id": "r"})
    await spend(priced, "u", 200)
    await age_assignment(db, priced, "u", 31)
    await refill_tiers_once(db, batch_size=10)
    assert (await balance(priced, "u"))["available"] == 600
    await assert_ledger_consistent(db)


async def test_reset_refill_leaves_purchased_credits_alone(priced: Project, db: Database) -> None:
    await make_tier(priced, "free", credits=500, refill_interval="month")
    await priced.post("/v1/users", {"id": "u", "tier_id": "free"})
    await priced.grant("u", 70, source="purchase")
    await spend(priced, "u", 100)  # the allocation (soonest expiry) burns first
    await age_assignment(db, priced, "u", 31)
    await refill_tiers_once(db, batch_size=10)
    assert (await balance(priced, "u"))["available"] == 570


async def test_catch_up_after_downtime_grants_one_allocation_for_the_current_period(
    priced: Project, db: Database
) -> None:
    await make_tier(priced, "d", credits=10, refill_interval="day", refill_mode="rollover")
    await priced.post("/v1/users", {"id": "u", "tier_id": "d"})
    await age_assignment(db, priced, "u", 5)  # five refills missed
    await refill_tiers_once(db, batch_size=10)
    assert (await balance(priced, "u"))["available"] == 20
    assert await allocations(db, priced, "u") == 2
    assert await refill_tiers_once(db, batch_size=10) == 0, "nothing is due any more"


async def test_two_workers_at_once_grant_once_per_user_and_period(
    priced: Project, db: Database
) -> None:
    await make_tier(priced, "w", credits=5, refill_interval="week")
    users = [f"u{i}" for i in range(30)]
    for user in users:
        await priced.post("/v1/users", {"id": user, "tier_id": "w"})
        await age_assignment(db, priced, user, 8)
    done = await asyncio.gather(
        refill_tiers_once(db, batch_size=4), refill_tiers_once(db, batch_size=4)
    )
    assert sum(done) == len(users)
    for user in users:
        assert await allocations(db, priced, user) == 2
        assert (await balance(priced, user))["total"] == 5  # reset: one fresh allocation
    await assert_ledger_consistent(db)


async def test_a_crash_between_claim_and_commit_grants_nothing_and_a_rerun_grants_once(
    priced: Project, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_tier(priced, "c", credits=5, refill_interval="day", refill_mode="rollover")
    await priced.post("/v1/users", {"id": "u", "tier_id": "c"})
    await age_assignment(db, priced, "u", 1)
    real_grant = credits_service.grant

    async def crash(*args: object, **kwargs: object) -> object:
        await real_grant(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("worker died before commit")

    monkeypatch.setattr(credits_service, "grant", crash)
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await tiers.refill_due(session, now=utcnow(), limit=10)
    monkeypatch.setattr(credits_service, "grant", real_grant)
    assert (await balance(priced, "u"))["total"] == 5
    assert await allocations(db, priced, "u") == 1
    await refill_tiers_once(db, batch_size=10)
    await refill_tiers_once(db, batch_size=10)
    assert (await balance(priced, "u"))["total"] == 10
    assert await allocations(db, priced, "u") == 2
    await assert_ledger_consistent(db)


async def test_monthly_periods_clamp_to_month_ends() -> None:
    from datetime import UTC, datetime

    from app.tiers.periods import add_periods, current_period

    anchor = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert add_periods(anchor, "month", 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert add_periods(anchor, "month", 2) == datetime(2026, 3, 31, 12, tzinfo=UTC)
    now = datetime(2026, 3, 15, tzinfo=UTC)
    assert current_period(anchor, "month", now) == (
        datetime(2026, 2, 28, 12, tzinfo=UTC),
        datetime(2026, 3, 31, 12, tzinfo=UTC),
    )
    assert current_period(anchor, "year", now)[1] == datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert add_periods(anchor, "week", 1) - anchor == timedelta(days=7)
