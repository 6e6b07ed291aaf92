"""Real parallel HTTP requests (uvicorn over TCP) against real PostgreSQL.

Each test ends with `creditd verify`'s invariants over the whole database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal

from app.credits import service as credits_service
from app.db.session import Database
from app.workers.runner import sweep_holds_once
from tests.conftest import Project, assert_ledger_consistent
from tests.helpers import balance, body, complete, ledger, start, tokens

# _default: 1 credit per 1K input tokens → 10,000 input tokens hold exactly 10 credits.
TEN_CREDITS = {"input_tokens": 10_000, "output_tokens": 0}


async def test_fifty_parallel_starts_on_250_credits_admit_exactly_25(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    await p.user("u_race", credits=250)

    async def one() -> dict[str, object]:
        r = await p.post(
            "/v1/transactions/start",
            {"user_id": "u_race", "model": "m", "provisional_tokens": TEN_CREDITS},
        )
        assert r.status_code == 201, r.text
        return dict(body(r))

    results = await asyncio.gather(*(one() for _ in range(50)))
    admitted = [r for r in results if r["continue"]]
    denied = [r for r in results if not r["continue"]]
    assert len(admitted) == 25
    assert len(denied) == 25
    assert all(r["status"] == "denied" and r["reason"] == "insufficient_credits" for r in denied)
    assert all(r["hold_amount"] == 10 for r in admitted)
    assert await balance(p, "u_race") == {
        "available": Decimal(0),
        "held": Decimal(250),
        "total": Decimal(250),
    }
    await assert_ledger_consistent(db)


async def test_twenty_parallel_identical_completes_charge_once(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 2)
    await p.user("u_c", credits=1000)
    txn = await start(p, "u_c", inp=10_000, out=10_000)  # hold 30
    payload = {"success": True, "finalized_tokens": tokens(5_000, 1_000)}  # charge 7

    responses = await asyncio.gather(
        *(p.post(f"/v1/transactions/{txn['transaction_id']}/complete", payload) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.content for r in responses}) == 1, "every retry returns the first result"
    first = body(responses[0])
    assert first["credits_used"] == 7
    assert first["balance_adjustment"] == 23
    assert await balance(p, "u_c") == {
        "available": Decimal(993),
        "held": Decimal(0),
        "total": Decimal(993),
    }
    charges = [e for e in await ledger(p, "u_c") if e["kind"] == "usage"]
    assert len(charges) == 1

    differing = await p.post(
        f"/v1/transactions/{txn['transaction_id']}/complete",
        {"success": True, "finalized_tokens": tokens(6_000, 1_000)},
    )
    assert differing.status_code == 409
    assert differing.json()["code"] == "transaction_already_completed"
    assert await balance(p, "u_c") == {
        "available": Decimal(993),
        "held": Decimal(0),
        "total": Decimal(993),
    }
    await assert_ledger_consistent(db)


async def test_same_idempotency_key_twenty_times_concurrently_has_one_effect(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.user("u_i")
    headers = {"Idempotency-Key": "grant-once-42"}

    responses = await asyncio.gather(
        *(p.post("/v1/users/u_i/credits", {"amount": 5}, headers=headers) for _ in range(20))
    )
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] >= 1
    conflicts = [r.json()["code"] for r in responses if r.status_code == 409]
    assert set(conflicts) <= {"idempotency_key_in_flight"}
    assert len({r.content for r in responses if r.status_code == 201}) == 1

    replay = await p.post("/v1/users/u_i/credits", {"amount": 5}, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == next(r.content for r in responses if r.status_code == 201)

    grants = body(await p.get("/v1/users/u_i/grants"))["data"]
    assert len(grants) == 1
    assert (await balance(p, "u_i"))["total"] == 5
    await assert_ledger_consistent(db)


async def test_same_idempotency_key_for_one_shot_usage_charges_once(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    await p.user("u_usage", credits=100)
    payload = {"user_id": "u_usage", "model": "m", "tokens": tokens(3_000, 0)}

    responses = await asyncio.gather(
        *(p.post("/v1/usage", payload, headers={"Idempotency-Key": "usage-1"}) for _ in range(20))
    )
    assert {r.status_code for r in responses} <= {201, 409}
    conflicts = {r.json()["code"] for r in responses if r.status_code == 409}
    assert conflicts <= {"idempotency_key_in_flight"}
    charged = [r for r in responses if r.status_code == 201]
    assert len({r.content for r in charged}) == 1, "every 201 is the one response or its replay"
    assert sum("idempotent-replayed" not in r.headers for r in charged) == 1
    assert (await balance(p, "u_usage"))["total"] == 97
    await assert_ledger_consistent(db)


async def test_parallel_debits_never_overspend(live_project: Project, db: Database) -> None:
    p = live_project
    await p.user("u_d", credits=100)
    responses = await asyncio.gather(
        *(p.post("/v1/users/u_d/debits", {"amount": 7}) for _ in range(30))
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 14, 402: 16}
    assert all(
        r.json()["code"] == "insufficient_credits" for r in responses if r.status_code == 402
    )
    assert await balance(p, "u_d") == {
        "available": Decimal(2),
        "held": Decimal(0),
        "total": Decimal(2),
    }
    await assert_ledger_consistent(db)


async def test_parallel_first_usage_creates_the_user_once(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    responses = await asyncio.gather(
        *(
            p.post("/v1/transactions/start", {"user_id": "brand_new", "model": "m"})
            for _ in range(20)
        )
    )
    assert [r.status_code for r in responses] == [201] * 20
    users = body(await p.get("/v1/users"))["data"]
    assert [u["id"] for u in users] == ["brand_new"]
    await assert_ledger_consistent(db)


async def test_sweeper_racing_completions_ends_each_transaction_exactly_one_way(
    live_project: Project, db: Database
) -> None:
    p = live_project
    await p.price("_default", 1, 1)
    users = [f"u_s{i}" for i in range(20)]
    for user in users:
        await p.user(user, credits=1_000)
    # Two transactions per user, so a sweeper batch (one account) and completions interleave.
    txns = [
        (user, (await start(p, user, inp=10_000, hold_ttl_seconds=1))["transaction_id"])
        for user in users
        for _ in range(2)
    ]
    await asyncio.sleep(1.2)  # every hold is now past expires_at, none swept yet

    async def finish(i: int, txn_id: str) -> tuple[str, dict[str, object]]:
        r = await complete(p, txn_id, success=i % 2 == 0, inp=4_000)
        assert r.status_code == 200, r.text
        return txn_id, dict(body(r))

    async def sweeper() -> int:
        return await sweep_holds_once(db, batch_size=1)

    finishing = asyncio.gather(*(finish(i, t) for i, (_, t) in enumerate(txns)))
    sweeping = asyncio.gather(*(sweeper() for _ in range(3)))
    finished, sweeps = await asyncio.gather(finishing, sweeping)
    completions = dict(finished)
    swept = sum(sweeps)

    late = 0
    for user in users:
        entries = await ledger(p, user)
        for i, (owner, txn_id) in enumerate(txns):
            if owner != user:
                continue
            result = completions[txn_id]
            own = [e for e in entries if e["transaction_id"] == txn_id]
            kinds = Counter(e["kind"] for e in own)
            # Held once, released exactly once: by the completion or by the sweeper.
            assert kinds["hold"] == 1
            assert sum(e["held_amount"] for e in own) == 0
            assert kinds["hold_expired"] == (1 if result["late"] else 0)
            charge = Decimal(4) if i % 2 == 0 else Decimal(0)
            assert -sum(e["amount"] for e in own) == charge
            assert result["credits_used"] == charge
            assert result["status"] == ("completed" if i % 2 == 0 else "failed")
            late += bool(result["late"])
        assert await balance(p, user) == {
            "available": Decimal(996),
            "held": Decimal(0),
            "total": Decimal(996),
        }
    assert late == swept
    await assert_ledger_consistent(db)


async def test_deleting_a_user_while_a_start_waits_stops_the_start(
    live_project: Project, db: Database
) -> None:
    """The delete holds the account lock; the start that waited on it must see the user gone."""
    from sqlalchemy import text

    p = live_project
    await p.price("_default", 1, 1)
    await p.user("victim", credits=100)
    async with db.transaction() as session:
        account = (
            await session.execute(
                text(
                    "SELECT a.id FROM users u JOIN accounts a ON a.id = u.account_id "
                    "WHERE u.project_id = :p AND u.id = 'victim' FOR UPDATE OF a"
                ),
                {"p": p.id},
            )
        ).scalar_one()
        waiting = asyncio.create_task(
            p.post(
                "/v1/transactions/start",
                {"user_id": "victim", "model": "m", "provisional_tokens": tokens(1000, 0)},
            )
        )
        await asyncio.sleep(0.3)  # the start is now blocked on the account lock
        assert not waiting.done()
        from app.credits.repository import LockedAccount
        from app.users import repository as users_repo

        closing = LockedAccount(
            account, uuid.UUID(p.id), "victim", Decimal(0), Decimal(0), Decimal(0)
        )
        await credits_service.close(session, closing)
        await users_repo.soft_delete(session, uuid.UUID(p.id), "victim")
    r = await waiting
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "user_not_found"
    pending = body(await p.get("/v1/transactions", params={"user_id": "victim"}))["data"]
    assert pending == []
    await assert_ledger_consistent(db)


async def test_concurrent_metadata_patches_all_land(live_project: Project) -> None:
    p = live_project
    await p.user("u")
    results = await asyncio.gather(
        *(p.patch("/v1/users/u", {"metadata": {f"k{i}": i}}) for i in range(20))
    )
    assert {r.status_code for r in results} == {200}
    metadata = body(await p.get("/v1/users/u"))["metadata"]
    assert metadata == {f"k{i}": i for i in range(20)}
