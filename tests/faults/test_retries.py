"""A request that failed with a transient 503 changed nothing, and its retry with the same
Idempotency-Key applies once. The one fault that may have changed something, a lost reply to
COMMIT, is settled through the stored idempotent response when the request had a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from app import routing
from app.core.settings import ApiSettings, DatabaseSettings, Settings
from app.db import session as session_module
from app.main import create_app
from app.transactions import fast
from tests.conftest import ADMIN_TOKEN, Project, create_project
from tests.fixtures.locks import account_locked
from tests.helpers import balance

START = {"user_id": "u", "model": "m", "provisional_tokens": {"input_tokens": 1000}}


@pytest.fixture
def lose_next_commit(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The next COMMIT loses its reply: the connection dies right after COMMIT (with what
    rides along with it, a stored idempotent response) was sent, having committed
    (``applied``) or not. asyncpg then raises what it raises when the server goes away
    mid-operation."""
    original = session_module.send
    plan = {"armed": False, "applied": False}

    async def send(raw: asyncpg.Connection, sql: str) -> str:
        if not plan["armed"] or not sql.endswith("COMMIT"):
            return await original(raw, sql)
        plan["armed"] = False
        if plan["applied"]:
            await original(raw, sql)
        raw.terminate()
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(session_module, "send", send)
    return plan


@pytest.fixture(params=["general", "fast"])
def lose_next_change(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``lose_next_commit`` for a start: on the general path, its COMMIT; on the fast path
    (app/transactions/fast.py), its one call, which commits on its own."""
    if request.param == "general":
        request.getfixturevalue("general_path")
        return request.getfixturevalue("lose_next_commit")
    plan = {"armed": False, "applied": False}
    execute = fast.execute

    async def call(raw: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str | None:
        if not plan["armed"]:
            return await execute(raw, sql, args)
        plan["armed"] = False
        if plan["applied"]:
            await execute(raw, sql, args)
        raw.terminate()
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(fast, "execute", call)
    return plan


async def _transactions(project: Project) -> list[str]:
    r = await project.get("/v1/transactions", params={"user_id": "u"})
    return [t["id"] for t in r.json()["data"]]


async def test_a_lost_commit_reply_of_a_keyed_request_that_committed_answers_its_result(
    project: Project, lose_next_change: dict[str, bool]
) -> None:
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    lose_next_change.update(armed=True, applied=True)
    r = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201, r.text
    assert await _transactions(project) == [r.json()["transaction_id"]]
    again = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == r.content
    assert await balance(project, "u") == {"available": 9, "held": 1, "total": 10}


async def test_a_lost_commit_of_a_keyed_request_that_did_not_commit_is_503_and_retry_applies_once(
    project: Project, lose_next_change: dict[str, bool]
) -> None:
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    lose_next_change.update(armed=True, applied=False)
    r = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k2"})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "database_unavailable"
    assert r.headers["retry-after"] == "2"
    assert await _transactions(project) == []
    retried = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k2"})
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await _transactions(project) == [retried.json()["transaction_id"]]


async def test_a_lost_commit_reply_without_a_key_is_503_commit_outcome_unknown(
    project: Project, lose_next_change: dict[str, bool]
) -> None:
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    lose_next_change.update(armed=True, applied=True)
    r = await project.post("/v1/transactions/start", START)
    assert r.status_code == 503
    assert r.json()["code"] == "commit_outcome_unknown"
    assert r.headers["retry-after"] == "2"
    # It did commit: this is the one 503 that may have changed something, and says so.
    assert len(await _transactions(project)) == 1


@pytest.fixture
async def impatient(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a lock_timeout of 300 ms, in process."""
    settings = Settings(
        env="test",
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=database_url, pool_size=4, lock_timeout_ms=300),
        api=ApiSettings(rate_limit_per_second=100_000, rate_limit_burst=100_000),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_a_keyed_request_that_timed_out_on_a_lock_changed_nothing_and_its_retry_applies_once(
    impatient: httpx.AsyncClient, database_url: str
) -> None:
    p = await create_project(impatient)
    await p.price("_default", 1, 1)
    await p.user("u", credits=10)
    async with account_locked(database_url, p.id, "u"):
        r = await p.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k"})
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "lock_timeout"
        assert r.headers["retry-after"] == "1"
        grant = await p.post("/v1/users/u/credits", {"amount": 5}, headers={"Idempotency-Key": "g"})
        assert (grant.status_code, grant.json()["code"]) == (503, "lock_timeout")
    assert await _transactions(p) == []
    assert await balance(p, "u") == {"available": 10, "held": 0, "total": 10}
    retried = await p.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k"})
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    replayed = await p.post("/v1/transactions/start", START, headers={"Idempotency-Key": "k"})
    assert replayed.headers["idempotent-replayed"] == "true"
    assert (
        await p.post("/v1/users/u/credits", {"amount": 5}, headers={"Idempotency-Key": "g"})
    ).status_code == 201
    assert await _transactions(p) == [retried.json()["transaction_id"]]
    assert await balance(p, "u") == {"available": 14, "held": 1, "total": 15}


@pytest.mark.parametrize("path", ["general", "fast"])
async def test_a_lost_commit_whose_server_process_still_runs_is_not_called_unapplied(
    path: str,
    project: Project,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The connection dies while the last write (sent with COMMIT) still waits for a lock on
    the server. A read then finds nothing, yet the server may still commit: the answer is
    `commit_outcome_unknown`, never "nothing was changed"; once the write went through, a
    retry with the key replays it, and it was applied once."""
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    first = (await project.post("/v1/transactions/start", START)).json()["transaction_id"]
    done = await project.post(f"/v1/transactions/{first}/complete", {"success": True})
    assert done.status_code == 200  # today's usage row of u exists now
    txn = (await project.post("/v1/transactions/start", START)).json()["transaction_id"]
    armed = {"on": True}

    async def unchecked(raw: asyncpg.Connection) -> None:
        # The server's check of the client off, for this connection: with it, the server ends
        # the waiting write once the socket closes, and the answer is a clean 503
        # database_unavailable (test_a_start_cancelled_while_it_waits_for_the_lock_...).
        await raw.execute("SET client_connection_check_interval = 0")

    async def lose(raw: asyncpg.Connection, sending: asyncio.Future[Any]) -> None:
        armed["on"] = False
        await asyncio.sleep(0.3)  # sent: the server now waits for the usage row's lock
        raw.terminate()
        with contextlib.suppress(Exception):
            await sending
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    if path == "general":  # the write sent with COMMIT
        request.getfixturevalue("general_path")
        original = session_module.send

        async def send(raw: asyncpg.Connection, sql: str) -> str:
            if not (armed["on"] and sql.endswith("COMMIT")):
                return await original(raw, sql)
            await unchecked(raw)
            await lose(raw, asyncio.ensure_future(original(raw, sql)))
            raise AssertionError("lost")  # pragma: no cover - lose() raises

    else:  # the fast path's one call, which commits on its own
        execute = fast.execute

        async def call(raw: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str | None:
            if not (armed["on"] and "complete" in sql):
                return await execute(raw, sql, args)
            await unchecked(raw)
            await lose(raw, asyncio.ensure_future(execute(raw, sql, args)))
            raise AssertionError("lost")  # pragma: no cover - lose() raises

    complete = f"/v1/transactions/{txn}/complete"
    blocker = await asyncpg.connect(database_url)
    try:
        # A row lock: the completion's usage upsert waits for it (preparing it would not).
        await blocker.execute("BEGIN")
        locked = await blocker.fetch(
            "SELECT 1 FROM usage_daily WHERE project_id = $1 AND user_id = 'u' FOR UPDATE",
            uuid.UUID(project.id),
        )
        assert len(locked) == 1
        if path == "general":
            monkeypatch.setattr(session_module, "send", send)
        else:
            monkeypatch.setattr(fast, "execute", call)
        monkeypatch.setattr(routing, "COMMIT_CHECK_SECONDS", 1.0)
        r = await project.post(complete, {"success": True}, headers={"Idempotency-Key": "k9"})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "commit_outcome_unknown"
        await blocker.execute("ROLLBACK")  # the waiting write goes on and commits
    finally:
        await blocker.close()
    for _ in range(100):  # until the server process has finished
        again = await project.post(complete, {"success": True}, headers={"Idempotency-Key": "k9"})
        if again.status_code != 409:
            break
        await asyncio.sleep(0.05)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert (await project.get(f"/v1/transactions/{txn}")).json()["status"] == "completed"
    assert await balance(project, "u") == {"available": 8, "held": 0, "total": 8}
