"""The renewal worker: one grant per subscription and period, catch-up, several workers, a
crash mid-batch, and ending subscriptions canceled at the period end."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from app.core.clock import utcnow
from app.credits import service as credits_service
from app.db.session import Database
from app.plans import service as plans
from app.workers.runner import renew_subscriptions_once
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body
from tests.plans.test_plans import (
    allocation_rows,
    cancel,
    event_types,
    make_plan,
    subscribed,
    user_tier,
)
from tests.tiers.test_tiers import make_tier


async def age_subscription(db: Database, sub_id: str, days: int) -> None:
    """Pretend the subscription started ``days`` earlier: its period bounds, its period anchor
    and its allocations move back (current_period_end may now be in the past: it is due)."""
    async with db.transaction() as session:
        row = (
            await session.execute(
                text("SELECT metadata->>'period_anchor' FROM subscriptions WHERE id = :s"),
                {"s": sub_id},
            )
        ).scalar_one()
        anchor = (datetime.fromisoformat(row) - timedelta(days=days)).isoformat()
        await session.execute(
            text(
                "UPDATE subscriptions SET "
                "current_period_start = current_period_start - make_interval(days => :d), "
                "current_period_end = current_period_end - make_interval(days => :d), "
                "metadata = jsonb_set(metadata, '{period_anchor}', to_jsonb(CAST(:a AS text))) "
                "WHERE id = :s"
            ),
            {"d": days, "s": sub_id, "a": anchor},
        )
        await session.execute(
            text(
                "UPDATE allocations SET period_start = period_start - make_interval(days => :d) "
                "WHERE source = 'subscription' AND source_ref = :s"
            ),
            {"d": days, "s": sub_id},
        )


async def get_sub(project: Project, sub_id: str) -> dict[str, Any]:
    r = await project.get(f"/v1/subscriptions/{sub_id}")
    assert r.status_code == 200, r.text
    return dict(body(r))


async def test_renewal_after_the_period_grants_one_more_period(
    project: Project, db: Database
) -> None:
    await make_plan(project, "pro", interval="month", credits_per_period=100)
    await project.user("u")
    sub = await subscribed(project, "u")
    assert await renew_subscriptions_once(db, batch_size=10) == 0, "not due yet"
    await age_subscription(db, sub["id"], 31)
    assert await renew_subscriptions_once(db, batch_size=10) >= 1
    assert (await balance(project, "u"))["total"] == 200
    rows = await allocation_rows(db, project, "u")
    assert len(rows) == 2
    renewed = await get_sub(project, sub["id"])
    start = datetime.fromisoformat(renewed["current_period_start"])
    end = datetime.fromisoformat(renewed["current_period_end"])
    assert start <= utcnow() < end
    assert max(r.period_start for r in rows) == start
    assert renewed["status"] == "active"
    assert "subscription.renewed" in await event_types(project, "u")
    assert await renew_subscriptions_once(db, batch_size=10) == 0, "nothing is due any more"
    assert (await balance(project, "u"))["total"] == 200
    await assert_ledger_consistent(db)


async def test_catch_up_after_several_missed_periods_grants_once_for_the_current_period(
    project: Project, db: Database
) -> None:
    await make_plan(project, "daily", interval="day", credits_per_period=10)
    await project.user("u")
    sub = await subscribed(project, "u", "daily")
    original_start = datetime.fromisoformat(sub["current_period_start"])
    await age_subscription(db, sub["id"], 5)  # five renewals missed
    await renew_subscriptions_once(db, batch_size=10)
    assert (await balance(project, "u"))["total"] == 20
    assert len(await allocation_rows(db, project, "u")) == 2
    renewed = await get_sub(project, sub["id"])
    # Anchored at the first period start: the current period starts at the same time of day.
    start = datetime.fromisoformat(renewed["current_period_start"])
    assert start == original_start  # 5 days back + 5 whole days
    assert datetime.fromisoformat(renewed["current_period_end"]) == start + timedelta(days=1)
    assert await renew_subscriptions_once(db, batch_size=10) == 0


async def test_cancel_at_period_end_is_ended_by_the_worker_without_a_renewal(
    project: Project, db: Database
) -> None:
    await make_tier(project, "basic", credits=0)
    await make_tier(project, "gold", credits=0)
    await make_plan(project, "pro", tier_id="gold", credits_per_period=100)
    await project.post("/v1/users", {"id": "u", "tier_id": "basic"})
    sub = await subscribed(project, "u")
    assert (await cancel(project, sub["id"], at_period_end=True)).status_code == 200
    await age_subscription(db, sub["id"], 31)
    period_end = (await get_sub(project, sub["id"]))["current_period_end"]
    assert await renew_subscriptions_once(db, batch_size=10) == 1
    ended = await get_sub(project, sub["id"])
    assert ended["status"] == "canceled"
    assert ended["ended_at"] == period_end
    assert await user_tier(project, "u") == "basic"
    assert (await balance(project, "u"))["total"] == 100, "no renewal; credits kept"
    assert len(await allocation_rows(db, project, "u")) == 1
    assert "subscription.ended" in await event_types(project, "u")
    assert await renew_subscriptions_once(db, batch_size=10) == 0


async def test_a_subscription_canceled_now_is_never_renewed(project: Project, db: Database) -> None:
    await make_plan(project, "pro")
    await project.user("u")
    sub = await subscribed(project, "u")
    await cancel(project, sub["id"], at_period_end=False)
    await age_subscription(db, sub["id"], 31)
    assert await renew_subscriptions_once(db, batch_size=10) == 0
    assert (await balance(project, "u"))["total"] == 100


async def test_two_workers_at_once_grant_once_per_subscription_and_period(
    project: Project, db: Database
) -> None:
    await make_plan(project, "wk", interval="day", credits_per_period=5)
    subs = []
    for i in range(20):
        await project.user(f"u{i}")
        sub = await subscribed(project, f"u{i}", "wk")
        await age_subscription(db, sub["id"], 3)
        subs.append(sub)
    done = await asyncio.gather(
        renew_subscriptions_once(db, batch_size=3), renew_subscriptions_once(db, batch_size=3)
    )
    assert sum(done) == len(subs)
    for i in range(20):
        assert len(await allocation_rows(db, project, f"u{i}")) == 2
        assert (await balance(project, f"u{i}"))["total"] == 10
    await assert_ledger_consistent(db)


async def test_a_crash_between_claim_and_commit_grants_nothing_and_a_rerun_grants_once(
    project: Project, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_plan(project, "d", interval="day", credits_per_period=7)
    await project.user("u")
    sub = await subscribed(project, "u", "d")
    await age_subscription(db, sub["id"], 1)
    before = await get_sub(project, sub["id"])
    real_grant = credits_service.grant

    async def crash(*args: object, **kwargs: object) -> object:
        await real_grant(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("worker died before commit")

    monkeypatch.setattr(credits_service, "grant", crash)
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await plans.renew_due(session, now=utcnow(), limit=10)
    monkeypatch.setattr(credits_service, "grant", real_grant)
    assert (await balance(project, "u"))["total"] == 7
    assert len(await allocation_rows(db, project, "u")) == 1
    assert await get_sub(project, sub["id"]) == before
    await renew_subscriptions_once(db, batch_size=10)
    await renew_subscriptions_once(db, batch_size=10)
    assert (await balance(project, "u"))["total"] == 14
    assert len(await allocation_rows(db, project, "u")) == 2
    await assert_ledger_consistent(db)


async def test_an_allocation_already_recorded_for_the_period_blocks_a_second_grant(
    project: Project, db: Database
) -> None:
    """The unique key is the guarantee: even if the period bounds were not advanced."""
    await make_plan(project, "d", interval="day", credits_per_period=7)
    await project.user("u")
    sub = await subscribed(project, "u", "d")
    await age_subscription(db, sub["id"], 1)
    await renew_subscriptions_once(db, batch_size=10)
    # Roll the bounds back as if the renewal's update had been lost: the period is due again.
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE subscriptions SET current_period_start = current_period_start - "
                "interval '1 day', current_period_end = current_period_end - interval '1 day' "
                "WHERE id = :s"
            ),
            {"s": sub["id"]},
        )
    assert await renew_subscriptions_once(db, batch_size=10) == 1
    assert (await balance(project, "u"))["total"] == 14
    assert len(await allocation_rows(db, project, "u")) == 2
    assert datetime.fromisoformat((await get_sub(project, sub["id"]))["current_period_end"]) > (
        utcnow()
    )


async def test_a_busy_account_is_skipped_and_renewed_on_the_next_run(
    project: Project, db: Database
) -> None:
    await make_plan(project, "d", interval="day", credits_per_period=7)
    await project.user("u")
    sub = await subscribed(project, "u", "d")
    await age_subscription(db, sub["id"], 1)
    async with db.transaction() as holder:
        assert await credits_service.lock_for_user(holder, uuid.UUID(project.id), "u") is not None
        assert await renew_subscriptions_once(db, batch_size=10) == 0
    assert await renew_subscriptions_once(db, batch_size=10) == 1
    assert (await balance(project, "u"))["total"] == 14


async def test_a_deleted_users_subscription_is_ended_by_the_worker(
    project: Project, db: Database
) -> None:
    await make_plan(project, "d", interval="day", credits_per_period=7)
    await project.user("u")
    sub = await subscribed(project, "u", "d")
    await age_subscription(db, sub["id"], 1)
    r = await project.delete("/v1/users/u")
    assert r.status_code == 204, r.text
    assert await renew_subscriptions_once(db, batch_size=10) == 1
    async with db.transaction() as session:
        status = (
            await session.execute(
                text("SELECT status FROM subscriptions WHERE id = :s"), {"s": sub["id"]}
            )
        ).scalar_one()
    assert status == "canceled"


async def test_racing_subscribe_requests_create_one_subscription(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await make_plan(p, "pro", credits_per_period=3)
    await p.user("u")
    results = await asyncio.gather(
        *(
            p.post("/v1/users/u/subscriptions", {"plan_id": "pro", "provider": "manual"})
            for _ in range(8)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 7, codes
    assert len(body(await p.get("/v1/users/u/subscriptions"))["data"]) == 1
    assert (await balance(p, "u"))["total"] == 3
    await assert_ledger_consistent(db)
