"""Team accounts under real parallel HTTP requests (uvicorn over TCP, real PostgreSQL): every
charge of a team serializes on the team account's lock, so the shared balance and the member
caps hold exactly. Each test ends with `creditd verify`'s invariants."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import httpx

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import body

# _default: 1 credit per 1K input tokens → 10,000 input tokens hold exactly 10 credits.
TEN_CREDITS = {"input_tokens": 10_000, "output_tokens": 0}


async def _team_with_members(p: Project, team_id: str, credits: int, members: list[str]) -> None:
    assert (await p.post("/v1/teams", {"id": team_id})).status_code == 201
    for user_id in members:
        await p.user(user_id)
        r = await p.put(f"/v1/teams/{team_id}/members/{user_id}", {})
        assert r.status_code == 200, r.text
    r = await p.post(f"/v1/teams/{team_id}/credits", {"amount": credits})
    assert r.status_code == 201, r.text


async def _team_balance(p: Project, team_id: str) -> dict[str, Decimal]:
    r = await p.get(f"/v1/teams/{team_id}")
    return {k: Decimal(str(v)) for k, v in body(r)["balance"].items()}


async def test_fifty_members_starting_at_once_on_250_team_credits_admit_exactly_25(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    members = [f"m{i:02d}" for i in range(50)]
    await _team_with_members(p, "t_race", 250, members)

    async def one(user_id: str) -> dict[str, object]:
        r = await p.post(
            "/v1/transactions/start",
            {"user_id": user_id, "team_id": "t_race", "model": "m",
             "provisional_tokens": TEN_CREDITS},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        return dict(body(r))

    results = await asyncio.gather(*(one(m) for m in members))
    admitted = [r for r in results if r["continue"]]
    denied = [r for r in results if not r["continue"]]
    assert len(admitted) == 25
    assert len(denied) == 25
    assert all(r["reason"] == "insufficient_credits" for r in denied)
    assert await _team_balance(p, "t_race") == {
        "available": Decimal(0),
        "held": Decimal(250),
        "total": Decimal(250),
    }
    for user_id in members[:3]:  # the members' own accounts are untouched
        assert (await p.balance(user_id))["held"] == 0
    holds = [e for e in body(await p.get("/v1/teams/t_race/ledger?limit=100"))["data"]
             if e["kind"] == "hold"]  # fmt: skip
    assert len(holds) == 25
    assert len({e["user_id"] for e in holds}) == 25  # each hold names its member
    await assert_ledger_consistent(db)


async def test_a_member_cap_is_never_exceeded_by_forty_parallel_starts(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    await _team_with_members(p, "t_cap", 10_000, ["capped", "free"])
    r = await p.put(
        "/v1/teams/t_cap/members/capped",
        {"role": "member", "spend_caps": [{"period": "day", "limit": 50}]},
    )
    assert r.status_code == 200, r.text

    async def one(user_id: str) -> dict[str, object]:
        r = await p.post(
            "/v1/transactions/start",
            {"user_id": user_id, "team_id": "t_cap", "model": "m",
             "provisional_tokens": TEN_CREDITS},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        return dict(body(r))

    # 40 starts of the capped member, interleaved with 10 of an uncapped one.
    results = await asyncio.gather(
        *(one("capped") for _ in range(40)), *(one("free") for _ in range(10))
    )
    capped, free = results[:40], results[40:]
    admitted = [r for r in capped if r["continue"]]
    assert len(admitted) == 5  # 5 holds of 10 = the day cap of 50
    assert {r["reason"] for r in capped if not r["continue"]} == {"spend_cap_reached"}
    assert all(r["continue"] for r in free)
    # Completing charges count against the cap too: one more start is still refused.
    for held in admitted:
        done = await p.post(
            f"/v1/transactions/{held['transaction_id']}/complete",
            {"success": True, "finalized_tokens": TEN_CREDITS},
        )
        assert done.status_code == 200, done.text
    again = await one("capped")
    assert again["continue"] is False
    assert again["reason"] == "spend_cap_reached"
    balance = await _team_balance(p, "t_cap")
    assert balance["held"] == 100  # the free member's 10 holds
    assert balance["total"] == 10_000 - 50
    await assert_ledger_consistent(db)


_START_WAITING = """
    SELECT count(*) FROM pg_stat_activity
    WHERE application_name = 'creditd' AND wait_event_type = 'Lock'
      AND datname = current_database()
"""


async def test_a_member_removed_while_their_start_waits_for_the_lock_is_not_charged(
    project: Project, database_url: str, db: Database
) -> None:
    """A start waiting for the team account's lock sees a removal committed meanwhile (or the
    removal waits for it): never a hold by someone who was no member when it was taken."""
    p = project
    await p.price("_default", 1, 1)
    await _team_with_members(p, "t_gone", 100, ["leaver"])
    team = await asyncpg.connect(database_url, server_settings={"application_name": "psql"})
    try:
        tx = team.transaction()
        await tx.start()
        await team.execute(
            "SELECT 1 FROM teams tm JOIN accounts a ON a.id = tm.account_id"
            " WHERE tm.project_id = $1 AND tm.id = 't_gone' FOR UPDATE OF a",
            uuid.UUID(p.id),
        )
        finished: list[str] = []

        async def start() -> httpx.Response:
            r = await p.post(
                "/v1/transactions/start",
                {"user_id": "leaver", "team_id": "t_gone", "model": "m",
                 "provisional_tokens": TEN_CREDITS},
            )  # fmt: skip
            finished.append("start")
            return r

        async def remove() -> httpx.Response:
            r = await p.delete("/v1/teams/t_gone/members/leaver")
            finished.append("remove")
            return r

        starting = asyncio.create_task(start())
        for _ in range(200):  # until the start waits for the account's lock
            if await team.fetchval(_START_WAITING):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the start never waited for the team's lock")
        removing = asyncio.create_task(remove())
        await asyncio.sleep(0.3)  # the removal commits now, or waits for the start's lock
        await tx.rollback()
        started, removed = await asyncio.gather(starting, removing)
    finally:
        await team.close()
    assert removed.status_code == 204, removed.text
    if finished[0] == "remove":  # the removal committed first: the start must see it
        assert started.status_code == 403, started.text
        assert started.json()["code"] == "not_a_team_member"
        assert (await _team_balance(p, "t_gone"))["held"] == 0
    else:  # the start went first (the removal waited for it): an ordinary admitted start
        assert started.status_code == 201, started.text
        assert body(started)["continue"] is True
    await assert_ledger_consistent(db)


async def _member_of_three_teams(p: Project) -> None:
    await p.price("_default", 1, 1)
    await p.user("u", credits=1000)
    for team_id in ("t1", "t2", "t3"):
        await _team_with_members(p, team_id, 1000, [])
        r = await p.put(f"/v1/teams/{team_id}/members/u", {})
        assert r.status_code == 200, r.text


async def _starts_on_every_account(p: Project, rounds: int) -> list[dict[str, object]]:
    async def one(team_id: str | None) -> dict[str, object]:
        payload: dict[str, object] = {"user_id": "u", "model": "m",
                                      "provisional_tokens": TEN_CREDITS}  # fmt: skip
        if team_id is not None:
            payload["team_id"] = team_id
        r = await p.post("/v1/transactions/start", payload)
        assert r.status_code == 201, r.text
        return dict(body(r))

    accounts = (None, "t1", "t2", "t3")
    return list(await asyncio.gather(*(one(a) for _ in range(rounds) for a in accounts)))


async def test_a_users_concurrency_limit_holds_across_their_own_and_team_accounts(
    live_project: Project, db: Database
) -> None:
    """Starts on four accounts (each under its own lock) count toward one tier limit: they
    serialize on the user's limits lock, so exactly one is admitted."""
    p = live_project
    r = await p.post(
        "/v1/tiers",
        {"id": "one", "name": "one", "credits": 0, "max_concurrent_transactions": 1},
    )
    assert r.status_code == 201, r.text
    await _member_of_three_teams(p)
    assert (await p.post("/v1/users/u/tier", {"tier_id": "one"})).status_code == 200
    results = await _starts_on_every_account(p, 10)
    admitted = [r for r in results if r["continue"]]
    assert len(admitted) == 1
    assert {r["reason"] for r in results if not r["continue"]} == {"concurrency_limit"}
    await assert_ledger_consistent(db)


async def test_a_users_own_spend_cap_holds_across_their_own_and_team_accounts(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await _member_of_three_teams(p)
    r = await p.put("/v1/users/u/spend-caps/day", {"limit": 30, "action": "deny"})
    assert r.status_code in (200, 201), r.text
    results = await _starts_on_every_account(p, 10)
    admitted = [r for r in results if r["continue"]]
    assert len(admitted) == 3  # holds of 10 against a cap of 30, wherever they are held
    assert {r["reason"] for r in results if not r["continue"]} == {"spend_cap_reached"}
    await assert_ledger_consistent(db)
