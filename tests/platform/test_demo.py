"""`creditd serve --demo`: the printed example works as pasted, then so does the README."""

from __future__ import annotations

import shlex
from decimal import Decimal
from urllib.parse import urlsplit

import httpx

from app.cli import demo_banner
from app.db.session import Database
from app.projects import demo
from tests.helpers import body


def _printed_curl(banner: str) -> list[str]:
    """The curl command of the banner, split the way a shell splits the pasted lines."""
    lines = banner.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    command = []
    for line in lines[first:]:
        command.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command))


async def _send_curl(client: httpx.AsyncClient, argv: list[str]) -> httpx.Response:
    """Send what ``curl -s -X METHOD URL -H ... -d ...`` would send."""
    assert argv[:2] == ["curl", "-s"]
    method, url, headers, data = "GET", "", {}, None
    args = iter(argv[2:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args)
        else:
            url = arg
    return await client.request(method, urlsplit(url).path, headers=headers, content=data)


async def test_the_printed_example_works_as_pasted_then_the_readme_walk_through(
    client: httpx.AsyncClient, db: Database
) -> None:
    async with db.transaction() as session:
        _, key = await demo.ensure(session, None)
    argv = _printed_curl(demo_banner(key, "127.0.0.1", 8000))  # as `make run` prints it
    assert argv[4] == "http://localhost:8000/v1/transactions/start"

    example = await _send_curl(client, argv)

    assert example.status_code == 201, example.text
    held = body(example)
    assert held["continue"] is True
    assert held["status"] == "pending"
    assert held["balance"] == Decimal("96.5")  # 100 demo credits - 3.5 held at the demo prices

    # README "A walk-through with curl", step by step, with the same key.
    auth = {"Authorization": f"Bearer {key}"}
    r = await client.put(
        "/v1/models/_default",
        headers=auth,
        json={"input_price_per_1k": 0.5, "output_price_per_1k": 1.5},
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/users", headers=auth, json={"id": "u_1", "metadata": {"plan": "free"}}
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/users/u_1/credits", headers=auth, json={"amount": 100, "reason": "welcome"}
    )
    assert r.status_code == 201, r.text
    assert body(r)["balance"] == 100
    start = {
        "user_id": "u_1",
        "model": "gpt-4o",
        "provisional_tokens": {"input_tokens": 1000, "output_tokens": 2000},
    }
    idem = {**auth, "Idempotency-Key": "req-42"}
    r = await client.post("/v1/transactions/start", headers=idem, json=start)
    assert r.status_code == 201, r.text
    started = body(r)
    assert (started["balance"], started["credits_used"]) == (Decimal("96.5"), Decimal("3.5"))
    replay = await client.post("/v1/transactions/start", headers=idem, json=start)
    assert replay.headers["idempotent-replayed"] == "true"
    reused = await client.post(
        "/v1/transactions/start", headers=idem, json={"user_id": "u_1", "model": "gpt-4o"}
    )
    assert reused.status_code == 409
    assert reused.json()["code"] == "idempotency_key_reused"
    r = await client.post(
        f"/v1/transactions/{started['transaction_id']}/complete",
        headers=auth,
        json={"success": True, "finalized_tokens": {"input_tokens": 800, "output_tokens": 1200}},
    )
    assert r.status_code == 200, r.text
    done = body(r)
    assert (done["balance"], done["balance_adjustment"]) == (Decimal("97.8"), Decimal("1.3"))
    r = await client.get("/v1/users/u_1/ledger", headers=auth)
    assert [e["kind"] for e in r.json()["data"]] == ["grant", "hold", "usage"]


async def test_demo_setup_is_kept_across_restarts_and_only_fills_what_is_missing(
    client: httpx.AsyncClient, db: Database
) -> None:
    async with db.transaction() as session:
        project_id, key = await demo.ensure(session, None)
    auth = {"Authorization": f"Bearer {key}"}
    prices = {"input_price_per_1k": 2, "output_price_per_1k": 3}
    r = await client.put("/v1/models/_default", headers=auth, json=prices)
    assert r.status_code == 200

    async with db.transaction() as session:
        again = await demo.ensure(session, key)

    assert again == (project_id, key)
    price = body(await client.get("/v1/models/_default", headers=auth))
    assert (price["input_price_per_1k"], price["output_price_per_1k"]) == (2, 3)
    user = body(await client.get(f"/v1/users/{demo.USER_ID}", headers=auth))
    assert user["balance"]["total"] == 100  # granted once, not on every start
    grants = body(await client.get(f"/v1/users/{demo.USER_ID}/grants", headers=auth))["data"]
    assert len(grants) == 1


async def test_a_demo_key_that_no_longer_works_gets_a_new_demo_project(db: Database) -> None:
    async with db.transaction() as session:
        project_id, key = await demo.ensure(session, "ck_not_a_key_of_this_database")
    assert key != "ck_not_a_key_of_this_database"
    async with db.transaction() as session:
        assert await demo.ensure(session, key) == (project_id, key)
