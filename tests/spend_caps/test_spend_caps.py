"""Spend caps: deny and warn, per model, UTC windows, and no race past a deny cap."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, complete, start


async def cap(
    project: Project, user: str, period: str, limit: int, action: str, model: str | None = None
) -> None:
    payload: dict[str, object] = {"limit": limit, "action": action}
    if model:
        payload["model"] = model
    r = await project.put(f"/v1/users/{user}/spend-caps/{period}", payload)
    assert r.status_code == 200, r.text


async def test_deny_cap_counts_charged_and_held_credits(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=1000)
    await cap(project, "u", "day", 10, "deny")
    first = await start(project, "u", inp=4)
    await complete(project, first["transaction_id"], inp=4)  # 4 charged today
    held = await start(project, "u", inp=5)  # 5 held
    assert held["continue"] is True
    over = await start(project, "u", inp=2)  # 4 + 5 + 2 > 10
    assert over["continue"] is False
    assert over["reason"] == "spend_cap_reached"
    assert (await start(project, "u", inp=1))["continue"] is True  # exactly 10


async def test_warn_cap_allows_and_emits_an_event(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=1000)
    await cap(project, "u", "month", 3, "warn")
    started = await start(project, "u", inp=5)
    assert started["continue"] is True
    events = body(await project.get("/v1/events", params={"type": "spend_cap.exceeded"}))["data"]
    assert len(events) == 1
    assert events[0]["data"]["limit"] == 3
    assert events[0]["data"]["requested"] == 5


async def test_model_cap_only_limits_that_model(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=1000)
    await cap(project, "u", "day", 5, "deny", model="big")
    r = await project.post(
        "/v1/transactions/start",
        {"user_id": "u", "model": "big", "provisional_tokens": {"input_tokens": 6}},
    )
    assert body(r)["reason"] == "spend_cap_reached"
    assert (await start(project, "u", inp=6))["continue"] is True  # gpt-4o: not capped


async def test_caps_are_listed_replaced_and_deleted(project: Project) -> None:
    await project.user("u")
    await cap(project, "u", "day", 5, "deny")
    await cap(project, "u", "day", 7, "warn")
    await cap(project, "u", "month", 50, "deny", model="m")
    caps = body(await project.get("/v1/users/u/spend-caps"))["data"]
    assert [(c["period"], c["model"], c["limit"], c["action"]) for c in caps] == [
        ("day", None, 7, "warn"),
        ("month", "m", 50, "deny"),
    ]
    assert (
        await project.delete("/v1/users/u/spend-caps/month", params={"model": "m"})
    ).status_code == 204
    assert (await project.delete("/v1/users/u/spend-caps/month")).status_code == 404
    bad = await project.put("/v1/users/u/spend-caps/week", {"limit": 1, "action": "deny"})
    assert bad.status_code == 422


async def test_check_reports_a_spend_cap(project: Project) -> None:
    await project.price("_default", 1000, 0)
    await project.user("u", credits=100)
    await cap(project, "u", "day", 3, "deny")
    r = await project.post("/v1/check", {"user_id": "u", "amount": 4})
    assert body(r)["allowed"] is False
    assert body(r)["reason"] == "spend_cap_reached"


async def test_parallel_starts_never_exceed_a_deny_cap(live_project: Project, db: Database) -> None:
    p = live_project
    await p.price("_default", 1000, 0)
    await p.user("u", credits=10_000)
    await cap(p, "u", "day", 100, "deny")
    results = await asyncio.gather(
        *(
            p.post(
                "/v1/transactions/start",
                {"user_id": "u", "model": "m", "provisional_tokens": {"input_tokens": 7}},
            )
            for _ in range(40)
        )
    )
    outcome = Counter(body(r)["reason"] for r in results)
    assert outcome == {None: 14, "spend_cap_reached": 26}  # 14 x 7 = 98 <= 100
    assert (await balance(p, "u"))["held"] == Decimal(98)
    await assert_ledger_consistent(db)
