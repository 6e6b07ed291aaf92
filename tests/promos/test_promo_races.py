"""Claims racing over real parallel HTTP (uvicorn over TCP) against real PostgreSQL.

A claim locks the account, then the promo row, so the limits hold however many claims arrive
at once.
Each test ends with `creditd verify`'s invariants over the whole database.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

import httpx

from app.db.session import Database
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body


async def test_two_hundred_users_racing_for_one_hundred_redemptions_get_exactly_one_hundred(
    live_project: Project, client: httpx.AsyncClient, db: Database
) -> None:
    p = live_project
    # Set up in-process, so the race starts on fresh TCP connections (none idling in keep-alive).
    setup = Project(id=p.id, key=p.key, client=client)
    users = [f"u_{i:03d}" for i in range(200)]
    created = await asyncio.gather(*(setup.post("/v1/users", {"id": u}) for u in users))
    assert {r.status_code for r in created} == {201}
    r = await setup.post("/v1/promos", {"code": "RUSH", "credits": 3, "max_redemptions": 100})
    assert r.status_code == 201, r.text

    async def claim(user: str) -> httpx.Response:
        # A saturated pool answers 503 pool_timeout (nothing changed): retry as a client would.
        for _ in range(20):
            r = await p.post("/v1/promos/rush/claim", {"user_id": user})
            if r.status_code != 503:
                return r
            await asyncio.sleep(float(r.headers["Retry-After"]))
        return r

    responses = await asyncio.gather(*(claim(u) for u in users))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 100, 409: 100}, statuses
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"promo_exhausted"}
    winners = {u for u, r in zip(users, responses, strict=True) if r.status_code == 201}
    assert all(body(r)["balance"] == 3 for r in responses if r.status_code == 201)

    promo = body(await setup.get("/v1/promos/rush"))
    assert promo["redemptions_count"] == 100
    redeemed: list[str] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"starting_after": cursor} if cursor else {})}
        page = body(await setup.get("/v1/promos/rush/redemptions", params=params))
        redeemed.extend(r["user_id"] for r in page["data"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert sorted(redeemed) == sorted(winners)
    totals = await asyncio.gather(*(balance(setup, u) for u in users))
    assert Counter(t["total"] for t in totals) == {Decimal(3): 100, Decimal(0): 100}
    await assert_ledger_consistent(db)


async def test_one_user_claiming_twenty_times_in_parallel_gets_one_grant(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.user("u_eager")
    r = await p.post("/v1/promos", {"code": "ONCE", "credits": 7})
    assert r.status_code == 201, r.text

    responses = await asyncio.gather(
        *(p.post("/v1/promos/ONCE/claim", {"user_id": "u_eager"}) for _ in range(20))
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: 19}, statuses
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"already_claimed"}

    grants = body(await p.get("/v1/users/u_eager/grants"))["data"]
    assert [(g["source"], g["amount"]) for g in grants] == [("promo", 7)]
    assert await balance(p, "u_eager") == {
        "available": Decimal(7),
        "held": Decimal(0),
        "total": Decimal(7),
    }
    assert body(await p.get("/v1/promos/once"))["redemptions_count"] == 1
    await assert_ledger_consistent(db)
