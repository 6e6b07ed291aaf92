"""The metering fast path (app/transactions/fast.py) does exactly what the general path does.

Every scenario below runs twice in one project, once with the fast path and once without it,
on two users in the same state. Everything must match, byte for byte where bytes are what a
client sees: the answers (status, body, replay header), the account, the ledger, the
transaction rows, the events, the grants, the day's usage and the stored responses of the
keys; only the ids and hold expiries differ by nature. The fast runs must have taken the
fast path where it applies (counted), and the ledger must verify afterwards.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from app import lane as lane_module
from app.db.session import Database, driver
from tests.conftest import Project, assert_ledger_consistent, fast_metering
from tests.fixtures.locks import account_locked

START = "/v1/transactions/start"


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The routes whose fast path answered (not handed back to the general path), in order,
    for lanes built from now on."""
    answered: list[str] = []
    for path, serve in list(lane_module._FAST.items()):

        async def counted(*args: Any, _path: str = path, _serve: Any = serve) -> Any:
            result = await _serve(*args)
            if result is not None:
                answered.append(_path)
            return result

        monkeypatch.setitem(lane_module._FAST, path, counted)
    return answered


class Run:
    """One run of a scenario: its user, its keys, the answers it got."""

    def __init__(self, project: Project, user: str) -> None:
        self.project = project
        self.user = user
        self.answers: list[httpx.Response] = []

    async def post(self, path: str, json: Any, key: str | None = None) -> dict[str, Any]:
        headers = {} if key is None else {"Idempotency-Key": f"{self.user}-{key}"}
        r = await self.project.post(path, json, headers=headers)
        self.answers.append(r)
        return dict(r.json())

    async def start(self, key: str | None = None, **fields: Any) -> dict[str, Any]:
        return await self.post(START, {"user_id": self.user, "model": "m", **fields}, key)

    async def complete(self, txn: dict[str, Any], key: str | None = None, **fields: Any) -> Any:
        return await self.post(f"/v1/transactions/{txn['transaction_id']}/complete", fields, key)


TOKENS = {"input_tokens": 1000, "output_tokens": 500}


async def _hold_then_charge(run: Run) -> None:
    await run.project.user(run.user, credits=100)
    txn = await run.start(provisional_tokens=TOKENS, feature_identifier="chat", metadata={"a": 1})
    await run.complete(
        txn,
        success=True,
        finalized_tokens={"input_tokens": 800, "output_tokens": 200},
        metadata={"b": "x"},
    )


async def _no_hold(run: Run) -> None:
    await run.project.user(run.user, credits=100)
    txn = await run.start()
    await run.complete(txn, success=True, finalized_tokens=TOKENS)
    txn = await run.start(hold_ttl_seconds=60)
    await run.complete(txn, success=False)


async def _denied(run: Run) -> None:
    await run.project.user(run.user, credits=1)
    await run.start(provisional_tokens=TOKENS)
    await run.start(provisional_tokens={"input_tokens": 100})


async def _failed(run: Run) -> None:
    await run.project.user(run.user, credits=100)
    txn = await run.start(provisional_tokens=TOKENS)
    await run.complete(txn, success=False, finalized_tokens={"input_tokens": 3})


async def _debt_and_grants(run: Run) -> None:
    await run.project.user(run.user)
    soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    await run.project.grant(run.user, 2, expires_at=later)
    await run.project.grant(run.user, 1.5, expires_at=soon)
    await run.project.grant(run.user, 3, category="paid")
    await run.project.grant(run.user, 0.25)
    txn = await run.start(provisional_tokens={"input_tokens": 1000})
    txn2 = await run.start(provisional_tokens={"input_tokens": 2000})
    await run.complete(txn, success=True, finalized_tokens={"input_tokens": 3000})
    await run.complete(txn2, success=True, finalized_tokens={"input_tokens": 9000})
    await run.start(provisional_tokens={"input_tokens": 1})  # in debt: denied


async def _thresholds(run: Run) -> None:
    r = await run.project.patch("/v1/project", {"settings": {"low_balance_thresholds": [50, 10.5]}})
    assert r.status_code == 200, r.text
    await run.project.user(run.user, credits=60)
    first = await run.start(provisional_tokens={"input_tokens": 15000})  # 60 -> 45: low 50
    second = await run.start(provisional_tokens={"input_tokens": 40000})  # 45 -> 5: low 10.5
    await run.complete(second, success=False)  # 5 -> 45: recovered 10.5
    await run.complete(first, success=True, finalized_tokens={"input_tokens": 70000})  # to -10


async def _overage(run: Run) -> None:
    r = await run.project.post(
        "/v1/tiers",
        {"id": "od", "name": "Overage", "allow_overage": True, "overage_limit": 20,
         "price_multiplier": 2, "model_overrides": {"n": {"price_multiplier": 3}}},
    )  # fmt: skip
    assert r.status_code in (201, 409), r.text
    r = await run.project.post("/v1/users", {"id": run.user, "tier_id": "od"})
    assert r.status_code == 201, r.text
    await run.project.grant(run.user, 5)
    await run.start(provisional_tokens={"input_tokens": 5000})  # 10: admitted to -5
    await run.start(provisional_tokens={"input_tokens": 8000})  # 16: -21 < -20, denied
    await run.post(START, {"user_id": run.user, "model": "n", "provisional_tokens": TOKENS})


async def _unlimited_overage(run: Run) -> None:
    r = await run.project.post("/v1/tiers", {"id": "free", "name": "Free", "allow_overage": True})
    assert r.status_code in (201, 409), r.text
    r = await run.project.post("/v1/users", {"id": run.user, "tier_id": "free"})
    assert r.status_code == 201, r.text
    txn = await run.start(provisional_tokens={"input_tokens": 100000})
    await run.complete(txn, success=True)


async def _keyed(run: Run) -> None:
    await run.project.user(run.user, credits=100)
    txn = await run.start("s", provisional_tokens=TOKENS)
    await run.start("s", provisional_tokens=TOKENS)  # replayed
    await run.start("s", provisional_tokens={"input_tokens": 1})  # reused: 409
    await run.complete(txn, "c", success=True)
    await run.complete(txn, "c", success=True)  # replayed
    await run.complete(txn, "c2", success=True)  # the same completion again: 200, its result
    await run.complete(txn, "c3", success=False)  # a different one: 409


async def _usage(run: Run) -> None:
    r = await run.project.put("/v1/jobs/render", {"price": "0.75"})
    assert r.status_code == 200, r.text
    await run.project.patch("/v1/project", {"settings": {"low_balance_thresholds": [5]}})
    await run.project.user(run.user, credits=10)
    await run.project.grant(
        run.user, 1, expires_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()
    )
    usage = {"user_id": run.user, "model": "m", "tokens": TOKENS, "feature_identifier": "f"}
    await run.post("/v1/usage", usage, "u")
    await run.post("/v1/usage", usage, "u")  # replayed
    await run.post("/v1/usage", {**usage, "metadata": {"x": [1, 2]}})
    await run.post("/v1/usage", {"user_id": run.user, "job": "render", "quantity": 3})
    await run.post("/v1/usage", {"user_id": run.user, "job": "render"})
    await run.post("/v1/usage", {"user_id": run.user, "model": "m", "tokens": {}})  # free
    await run.post("/v1/usage", {**usage, "tokens": {"input_tokens": 9000}})  # into debt
    await run.post("/v1/usage", {"user_id": run.user, "job": "unpriced"})  # 404 unknown job


async def _check(run: Run) -> None:
    r = await run.project.post(
        "/v1/tiers", {"id": "od", "name": "Overage", "allow_overage": True, "overage_limit": 5}
    )
    assert r.status_code in (201, 409), r.text
    r = await run.project.post("/v1/users", {"id": run.user, "tier_id": "od"})
    assert r.status_code == 201, r.text
    await run.project.grant(run.user, "2.50")
    asks: list[dict[str, Any]] = [
        {"model": "m", "provisional_tokens": TOKENS},  # 2: allowed
        {"model": "m", "provisional_tokens": {"input_tokens": 8000}},  # 8: to -5.5
        {"model": "m", "provisional_tokens": {"input_tokens": 7500}},  # 7.5: to -5, allowed
        {"amount": "7.500001"},
        {"amount": 0},
        {},
        {"model": "m"},
        {"model": "nope", "provisional_tokens": TOKENS},  # the _default price
    ]
    for i, ask in enumerate(asks):
        await run.post("/v1/check", {"user_id": run.user, **ask})
        await run.post("/v1/check", {"user_id": run.user, **ask}, f"c{i}")
    await run.post("/v1/check", {"user_id": run.user, "amount": 1}, "c0")  # reused: 409
    await run.post("/v1/check", {"user_id": run.user, "amount": 0}, "c4")  # replayed


async def _odd_names(run: Run) -> None:
    """User text that looks like the functions' markers stays as sent."""
    for model in ("x@B@y", "\u0001B\u0001", "\x01E\x01"):
        price = {"input_price_per_1k": 1, "output_price_per_1k": 1}
        r = await run.project.put(f"/v1/models/{quote(model, safe='')}", price)
        assert r.status_code in (200, 422), r.text  # a control character may be refused
    await run.project.user(run.user, credits=10)
    for model in ("x@B@y", "\u0001B\u0001", "\x01E\x01", "y@E@z"):
        txn = await run.post(
            START, {"user_id": run.user, "model": model, "provisional_tokens": TOKENS}
        )
        if "transaction_id" in txn:
            await run.complete(txn, success=True)
        await run.post("/v1/usage", {"user_id": run.user, "model": model, "tokens": TOKENS})


async def _general_only(run: Run) -> None:
    """Requests the fast path leaves to the general path: answered the same all the same."""
    txn = await run.start(provisional_tokens=TOKENS)  # a new user (auto-created): denied
    await run.complete(txn, success=True)  # denied: 409
    await run.complete({"transaction_id": "01a2e6b0-0000-7000-8000-000000000000"}, success=True)
    r = await run.project.post("/v1/teams", {"id": f"t-{run.user}", "name": "T"})
    assert r.status_code == 201, r.text
    await run.start(team_id=f"t-{run.user}")  # not a member: 403
    await run.post(f"{START}?x=%00", {"user_id": run.user, "model": "m"})  # a NUL: 422
    await run.post("/v1/check", {"user_id": f"{run.user}-new", "model": "m"})  # no such user
    await run.post("/v1/check", {"user_id": run.user, "team_id": f"t-{run.user}"})


Scenario = Callable[[Run], Awaitable[None]]
SCENARIOS: dict[str, tuple[Scenario, bool]] = {
    "hold then charge": (_hold_then_charge, True),
    "no hold": (_no_hold, True),
    "denied": (_denied, True),
    "failed": (_failed, True),
    "debt and grants": (_debt_and_grants, True),
    "balance thresholds": (_thresholds, True),
    "overage tier": (_overage, True),
    "unlimited overage": (_unlimited_overage, True),
    "keyed": (_keyed, True),
    "one-shot usage": (_usage, True),
    "check": (_check, True),
    "odd names": (_odd_names, True),
    "general only": (_general_only, False),
}

# What differs by nature between two runs: hold expiries, request, grant and ledger entry ids.
_VARIABLE = re.compile(r'"(expires_at|grant_id|request_id)": ?"[^"]*"|"ledger_entry_id": ?\d+')


async def _state(db: Database, project: Project, run: Run) -> dict[str, Any]:
    """Everything the run changed, with its transaction ids numbered in order."""
    async with db.transaction(autocommit=True) as session:
        conn = driver(session)
        args = (project.id, run.user)
        account = await conn.fetchrow(
            "SELECT a.total, a.held, a.debt FROM users u JOIN accounts a ON a.id = u.account_id "
            "WHERE u.project_id = $1 AND u.id = $2",
            *args,
        )
        txns = await conn.fetch(
            "SELECT id::text, status, reason, hold_amount, credits_used, provisional_tokens::text,"
            " finalized_tokens::text, metadata::text, late, completion_hash,"
            " completion_result::text, price_snapshot::text, expires_at IS NULL AS no_expiry,"
            " completed_at IS NULL AS open, feature_identifier, model, team_id, job "
            "FROM transactions WHERE project_id = $1 AND user_id = $2 ORDER BY id",
            *args,
        )
        ledger = await conn.fetch(
            "SELECT kind, amount, held_amount, total_after, held_after, transaction_id::text,"
            " reason, team_id, grant_id IS NULL AS no_grant "
            "FROM ledger_entries WHERE project_id = $1 AND user_id = $2 ORDER BY id",
            *args,
        )
        events = await conn.fetch(
            "SELECT type, data::text FROM events WHERE project_id = $1 AND user_id = $2 "
            "ORDER BY id",
            *args,
        )
        grants = await conn.fetch(
            "SELECT amount, remaining, category, expires_at IS NULL FROM grants "
            "WHERE project_id = $1 AND user_id = $2 ORDER BY created_at, id",
            *args,
        )
        usage = await conn.fetch(
            "SELECT model, feature, credits, transactions FROM usage_daily "
            "WHERE project_id = $1 AND user_id = $2 ORDER BY model, feature",
            *args,
        )
        keys = await conn.fetch(
            "SELECT substr(key, length($2) + 2) AS key, method, status_code, headers::text,"
            " convert_from(body, 'UTF8') AS body FROM idempotency_keys "
            "WHERE project_id = $1 AND key LIKE $2 || '-%' ORDER BY key",
            *args,
        )
    ids = [t["id"] for t in txns]

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            for i, txn_id in enumerate(ids):
                value = value.replace(txn_id, f"<txn {i}>")
            return _VARIABLE.sub("<var>", value).replace(run.user, "<user>")
        return value

    def rows(found: list[Any]) -> list[dict[str, Any]]:
        return [{k: plain(v) for k, v in dict(r).items() if k != "id"} for r in found]

    return {
        "account": dict(account) if account is not None else None,
        "transactions": rows(txns),
        "ledger": rows(ledger),
        "events": rows(events),
        "grants": rows(grants),
        "usage": rows(usage),
        "keys": rows(keys),
        "answers": [_answer(r, plain) for r in run.answers],
    }


def _answer(r: httpx.Response, plain: Callable[[Any], Any]) -> tuple[Any, ...]:
    return (
        r.status_code,
        r.headers.get("content-type"),
        r.headers.get("idempotent-replayed"),
        plain(r.text),
    )


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_fast_path_does_what_the_general_path_does(
    name: str, app: FastAPI, db: Database, project: Project, fast_calls: list[str]
) -> None:
    scenario, takes_fast = SCENARIOS[name]
    await project.price("m", 1, 2)
    await project.price("n", 2, 2)
    await project.price("_default", 3, 3)
    general, quick = Run(project, "general"), Run(project, "fast")
    with fast_metering(app, on=False):
        await scenario(general)
    assert fast_calls == []
    with fast_metering(app, on=True):
        await scenario(quick)
    assert bool(fast_calls) == takes_fast, fast_calls
    expected, got = await _state(db, project, general), await _state(db, project, quick)
    for part, value in expected.items():
        assert got[part] == value, part


async def test_a_fast_call_stores_its_key_in_the_transaction_that_makes_the_change(
    app: FastAPI, db: Database, project: Project, fast_calls: list[str]
) -> None:
    """The key's row and the effect commit together: written by one database transaction."""
    await project.price("m", 1, 2)
    await project.user("u", credits=10)
    with fast_metering(app, on=True):
        r = await project.post(
            START, {"user_id": "u", "model": "m"}, headers={"Idempotency-Key": "k"}
        )
    assert r.status_code == 201, r.text
    assert fast_calls == [START]
    async with db.transaction(autocommit=True) as session:
        row = await driver(session).fetchrow(
            "SELECT (SELECT xmin::text FROM idempotency_keys WHERE project_id = $1 AND key = 'k')"
            " AS key, (SELECT xmin::text FROM transactions WHERE project_id = $1 AND id = $2)"
            " AS effect, (SELECT convert_from(body, 'UTF8') FROM idempotency_keys"
            "             WHERE project_id = $1 AND key = 'k') AS body",
            uuid.UUID(project.id),
            uuid.UUID(r.json()["transaction_id"]),
        )
    assert row["key"] == row["effect"]
    assert row["body"] == r.text
    await assert_ledger_consistent(db)


@pytest.mark.parametrize("on", [False, True], ids=["general", "fast"])
async def test_a_start_cancelled_while_it_waits_for_the_lock_changes_nothing(
    on: bool, app: FastAPI, project: Project, database_url: str
) -> None:
    """A client that hangs up while its start waits for the account's lock: the server rolls
    the waiting statement back (client_connection_check_interval) on either path, so nothing
    is held when the lock is released afterwards."""
    await project.price("m", 1, 2)
    await project.user("u", credits=100)
    body = {"user_id": "u", "model": "m", "provisional_tokens": TOKENS}
    with fast_metering(app, on=on):
        async with account_locked(database_url, project.id, "u"):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(project.post(START, body), 0.5)
            await asyncio.sleep(0.5)  # the server notices the closed socket within 0.1 s
    await asyncio.sleep(0.2)
    r = await project.get("/v1/transactions", params={"user_id": "u"})
    assert r.json()["data"] == []
    assert (await project.balance("u"))["held"] == 0
