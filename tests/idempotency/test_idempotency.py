"""Idempotency-Key semantics of API.md: replay, reuse conflict, business errors kept, 5xx not."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app import routing
from app.core.http import render_json
from app.credits import service as credits_service
from app.credits.exceptions import InsufficientCredits
from app.db import session as session_module
from app.db.session import Database
from app.idempotency import repository as idem_repo
from tests.conftest import ADMIN_TOKEN, Project, assert_ledger_consistent
from tests.fixtures.locks import account_locked
from tests.helpers import balance, body


async def test_same_key_and_body_replays_the_first_response_byte_for_byte(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k1"}
    first = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    second = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert (await balance(project, "u"))["total"] == 3


async def test_same_key_with_a_different_body_is_409_reused(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k2"}
    await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    r = await project.post("/v1/users/u/credits", {"amount": 4}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"
    assert (await balance(project, "u"))["total"] == 3


async def test_same_key_on_another_path_is_409_reused(project: Project) -> None:
    await project.user("u", credits=10)
    headers = {"Idempotency-Key": "k3"}
    await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    r = await project.post("/v1/users/u/debits", {"amount": 3}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"


async def test_keys_are_scoped_per_project(project: Project, other_project: Project) -> None:
    await project.user("u")
    await other_project.user("u")
    headers = {"Idempotency-Key": "shared"}
    a = await project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
    b = await other_project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert (await balance(other_project, "u"))["total"] == 1


async def test_a_business_error_is_stored_and_replayed(project: Project) -> None:
    await project.user("u", credits=1)
    headers = {"Idempotency-Key": "k4"}
    first = await project.post("/v1/users/u/debits", {"amount": 5}, headers=headers)
    assert first.status_code == 402
    await project.grant("u", 10)  # even though the debit would now succeed...
    again = await project.post("/v1/users/u/debits", {"amount": 5}, headers=headers)
    assert again.status_code == 402  # ...the first answer stands
    assert again.headers["idempotent-replayed"] == "true"
    assert (await balance(project, "u"))["total"] == 11


async def test_a_validation_error_does_not_hold_the_key(project: Project) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k5"}
    bad = await project.post("/v1/users/u/credits", {"amount": -1}, headers=headers)
    assert bad.status_code == 422
    good = await project.post("/v1/users/u/credits", {"amount": -1}, headers=headers)
    assert good.status_code == 422
    assert "idempotent-replayed" not in good.headers


async def test_a_first_attempt_failing_with_5xx_does_not_hold_the_key(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "k6"}
    real_grant = credits_service.grant

    async def broken(*args: object, **kwargs: object) -> object:
        await real_grant(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("crash after the write, before commit")

    monkeypatch.setattr(credits_service, "grant", broken)
    r = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert body(r)["request_id"] == r.headers["x-request-id"]
    monkeypatch.setattr(credits_service, "grant", real_grant)

    retry = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert (await balance(project, "u"))["total"] == 3, "the crashed attempt's write rolled back"


@dataclass
class _Held:
    """A request paused inside its handler."""

    request: asyncio.Task[httpx.Response]
    go_on: asyncio.Event

    async def finish(self) -> httpx.Response:
        """Let it go on (to its COMMIT); its response."""
        self.go_on.set()
        return await self.request


@asynccontextmanager
async def held_in_flight(
    project: Project, monkeypatch: pytest.MonkeyPatch, key: str, amount: int = 1
) -> AsyncIterator[_Held]:
    """A real grant to u with ``key``, paused in its handler once its grant is written (its
    COMMIT not sent) until ``finish()`` or the end of the block; later requests run freely."""
    entered, go_on = asyncio.Event(), asyncio.Event()
    real_grant = credits_service.grant

    async def paused(*args: Any, **kwargs: Any) -> Any:
        result = await real_grant(*args, **kwargs)
        entered.set()
        await go_on.wait()
        return result

    monkeypatch.setattr(credits_service, "grant", paused)
    payload = {"amount": amount}
    held = _Held(
        asyncio.create_task(
            project.post("/v1/users/u/credits", payload, headers={"Idempotency-Key": key})
        ),
        go_on,
    )
    try:
        await asyncio.wait_for(entered.wait(), 10)
        monkeypatch.setattr(credits_service, "grant", real_grant)
        yield held
    finally:
        await held.finish()


_WAITING_FOR_A_LOCK = (
    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)"
)


async def _until(conn: asyncpg.Connection, query: str, *args: Any) -> None:
    """Poll ``query`` (a live view such as pg_locks) until it is true."""
    deadline = time.monotonic() + 10
    while not await conn.fetchval(query, *args):
        assert time.monotonic() < deadline, query
        await asyncio.sleep(0.005)


async def _expire(database_url: str, project_id: str, key: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        status = await conn.execute(
            "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
            "WHERE project_id = $1 AND key = $2",
            uuid.UUID(project_id),
            key,
        )
        assert status == "UPDATE 1"
    finally:
        await conn.close()


async def test_a_duplicate_of_a_request_in_flight_is_409_at_once_and_the_first_applies_once(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "busy"}
    async with held_in_flight(project, monkeypatch, "busy") as first:
        started = time.monotonic()
        r = await project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
        assert time.monotonic() - started < 1, "answered without waiting for the first request"
        assert (r.status_code, r.json()["code"]) == (409, "idempotency_key_in_flight")
        assert not first.request.done()
    assert first.request.result().status_code == 201
    assert "idempotent-replayed" not in first.request.result().headers
    replay = await project.post("/v1/users/u/credits", {"amount": 1}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.request.result().content
    assert (await balance(project, "u"))["total"] == 1


async def test_a_duplicate_that_waited_for_the_first_replays_what_it_committed(
    project: Project, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The look-up of the key's row runs once the key's lock is granted, in a snapshot of its
    own: a duplicate that waited (under 0.1 s) for the first request sees the row the first
    committed, and replays it without running its handler."""
    await project.user("u")
    grants: list[object] = []
    real_grant = credits_service.grant

    async def counted(*args: Any, **kwargs: Any) -> Any:
        grants.append(kwargs)
        return await real_grant(*args, **kwargs)

    monkeypatch.setattr(credits_service, "grant", counted)
    watcher = await asyncpg.connect(database_url)
    try:
        for attempt in range(10):
            key, ran_before = f"waited-{attempt}", len(grants)
            async with held_in_flight(project, monkeypatch, key) as held:
                duplicate = asyncio.create_task(
                    project.post(
                        "/v1/users/u/credits", {"amount": 1}, headers={"Idempotency-Key": key}
                    )
                )
                await _until(watcher, _WAITING_FOR_A_LOCK)
                first = await held.finish()
            again = await duplicate
            assert len(grants) - ran_before == 1, "the duplicate did not run its handler"
            if again.status_code != 409:  # 409 in flight: waited past 0.1 s (a slow machine)
                break
        else:
            pytest.fail("every duplicate waited past 0.1 s")
    finally:
        await watcher.close()
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert (await balance(project, "u"))["total"] == attempt + 1


async def test_an_expired_key_is_used_afresh(project: Project, database_url: str) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "old"}
    first = await project.post("/v1/users/u/credits", {"amount": 2}, headers=headers)
    assert first.status_code == 201
    await _expire(database_url, project.id, "old")
    # Another body would be 409 reused on a live key; on an expired one it is a new request.
    fresh = await project.post("/v1/users/u/credits", {"amount": 5}, headers=headers)
    assert fresh.status_code == 201
    assert "idempotent-replayed" not in fresh.headers
    replay = await project.post("/v1/users/u/credits", {"amount": 5}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == fresh.content
    assert (await balance(project, "u"))["total"] == 7


async def test_an_expired_key_being_taken_over_by_a_request_in_flight_is_409(
    project: Project, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    await project.user("u")
    headers = {"Idempotency-Key": "old-busy"}
    await project.post("/v1/users/u/credits", {"amount": 2}, headers=headers)
    await _expire(database_url, project.id, "old-busy")
    async with held_in_flight(project, monkeypatch, "old-busy", amount=3) as first:
        r = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
        assert (r.status_code, r.json()["code"]) == (409, "idempotency_key_in_flight")
    taken_over = first.request.result()
    assert taken_over.status_code == 201
    assert "idempotent-replayed" not in taken_over.headers
    replay = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == taken_over.content
    assert (await balance(project, "u"))["total"] == 5


async def test_a_keyed_request_keeps_its_lock_timeout_for_its_own_locks(
    project: Project, database_url: str
) -> None:
    """The claim waits 0.1 s for a concurrent holder of the key; the handler's own lock waits
    still get the configured lock_timeout (here: an account row held for 0.3 s)."""
    await project.user("u", credits=5)
    async with account_locked(database_url, project.id, "u"):
        request = asyncio.create_task(
            project.post("/v1/users/u/debits", {"amount": 1}, headers={"Idempotency-Key": "w"})
        )
        await asyncio.sleep(0.3)
        assert not request.done()
    r = await request
    assert r.status_code == 201, r.text
    assert (await balance(project, "u"))["total"] == 4


async def test_a_business_error_after_a_write_is_stored_and_its_write_rolled_back(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing needs a route to raise before it writes: the refused request's transaction
    rolls back whole, and its error is stored by a transaction of its own."""
    await project.user("u")
    headers = {"Idempotency-Key": "k7"}
    real_grant = credits_service.grant

    async def refusing(*args: object, **kwargs: object) -> object:
        await real_grant(*args, **kwargs)  # type: ignore[arg-type]
        raise InsufficientCredits()

    monkeypatch.setattr(credits_service, "grant", refusing)
    first = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert first.status_code == 402
    monkeypatch.setattr(credits_service, "grant", real_grant)
    again = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert again.status_code == 402
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert (await balance(project, "u"))["total"] == 0
    assert body(await project.get("/v1/users/u/grants"))["data"] == []


@pytest.mark.parametrize("committed", [True, False], ids=["stored", "in-flight"])
async def test_a_business_error_is_not_stored_over_a_request_that_took_the_key_meanwhile(
    project: Project, monkeypatch: pytest.MonkeyPatch, database_url: str, committed: bool
) -> None:
    """Between the refused transaction's rollback and the storing of its error, another
    request with the key may claim it: then that one's response is the key's (replayed), or
    it is still in flight (409); the error is not stored over it."""
    await project.user("u")
    headers = {"Idempotency-Key": "k8"}
    real_store_once = routing.store_once
    conn = await asyncpg.connect(database_url)
    tx = conn.transaction()

    async def after_another_request(*args: Any, **kwargs: Any) -> Any:
        await tx.start()
        assert await _store_grant_answer(
            conn, project, "k8", {"amount": 3}, 201, "application/json", b'{"winner":true}'
        )
        if committed:
            await tx.commit()
        return await real_store_once(*args, **kwargs)

    async def refusing(*args: object, **kwargs: object) -> object:
        raise InsufficientCredits()

    monkeypatch.setattr(credits_service, "grant", refusing)
    monkeypatch.setattr(routing, "store_once", after_another_request)
    try:
        r = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
        if not committed:
            await tx.commit()
    finally:
        await conn.close()
    if committed:
        assert (r.status_code, r.content) == (201, b'{"winner":true}')
        assert r.headers["idempotent-replayed"] == "true"
    else:
        assert (r.status_code, r.json()["code"]) == (409, "idempotency_key_in_flight")
    monkeypatch.undo()
    replay = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert (replay.status_code, replay.content) == (201, b'{"winner":true}')
    assert (await balance(project, "u"))["total"] == 0


async def _store_grant_answer(
    conn: asyncpg.Connection,
    project: Project,
    key: str,
    payload: object,
    status_code: int,
    content_type: str,
    answer: bytes,
) -> bool:
    """Store ``answer`` under ``key`` for a grant of ``payload`` to user u, as a writer that
    takes no lock on the key does (``store_once``), in ``conn``'s transaction."""
    return await idem_repo.claim(
        conn,
        project_id=uuid.UUID(project.id),
        key=key,
        method="POST",
        path="/v1/users/u/credits",
        request_hash=_hash("/v1/users/u/credits", payload),
        ttl=timedelta(hours=1),
        status_code=status_code,
        headers={"content-type": content_type},
        body=answer,
    )


def _hash(path: str, payload: object) -> str:
    return hashlib.sha256(b"POST " + path.encode() + b"\n" + render_json(payload)).hexdigest()


async def test_a_replay_is_refused_to_a_key_without_the_scope(project: Project) -> None:
    """A stored response (here: a new admin key's secret) is never replayed to a key that may
    not make the request."""
    usage = (await project.post("/v1/api-keys", {"name": "u", "scopes": ["usage"]})).json()["key"]
    headers = {"Idempotency-Key": "create-admin-key"}
    created = await project.post(
        "/v1/api-keys", {"name": "ci", "scopes": ["admin"]}, headers=headers
    )
    assert created.status_code == 201
    replay = await project.client.post(
        "/v1/api-keys",
        json={"name": "ci", "scopes": ["admin"]},
        headers={**headers, "Authorization": f"Bearer {usage}"},
    )
    assert replay.status_code == 403
    assert replay.json()["code"] == "insufficient_scope"
    assert "key" not in replay.json()


async def test_operator_project_creation_is_idempotent(client: httpx.AsyncClient) -> None:
    """A retried project creation returns the first project (and its one key), never a second."""
    key = f"create-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": key}
    first = await client.post("/v1/admin/projects", json={"name": "acme"}, headers=headers)
    again = await client.post("/v1/admin/projects", json={"name": "acme"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    other = await client.post("/v1/admin/projects", json={"name": "other"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"


async def test_operator_replay_needs_the_operator_token(client: httpx.AsyncClient) -> None:
    key = f"create-{uuid.uuid4()}"
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Idempotency-Key": key}
    assert (await client.post("/v1/admin/projects", json={"name": "a"}, headers=good)).is_success
    bad = {"Authorization": "Bearer not-the-token", "Idempotency-Key": key}
    replay = await client.post("/v1/admin/projects", json={"name": "a"}, headers=bad)
    assert replay.status_code == 401
    assert "api_key" not in replay.json()


@pytest.mark.parametrize("key", ["it's", "a\\b'; DROP TABLE users; --", "café ü", "'" * 255])
async def test_keys_with_quotes_backslashes_and_unicode_claim_and_replay(
    project: Project, key: str
) -> None:
    """The claim rides with BEGIN and the response with COMMIT as SQL literals: a key (and a
    path) holding quotes, backslashes or any printable text is stored and matched as sent."""
    await project.user("u")
    headers = {"Idempotency-Key": key.encode("latin-1")}  # HTTP header bytes are latin-1
    first = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    second = await project.post("/v1/users/u/credits", {"amount": 3}, headers=headers)
    assert first.status_code == second.status_code == 201, first.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    # A key one character longer (or shorter) is another key.
    other_key = (key + "x") if len(key) < 255 else key[:-1]
    other_headers = {"Idempotency-Key": other_key.encode("latin-1")}
    other = await project.post("/v1/users/u/credits", {"amount": 3}, headers=other_headers)
    assert other.status_code == 201
    assert "idempotent-replayed" not in other.headers
    assert (await balance(project, "u"))["total"] == 6


async def test_a_keyed_check_stores_its_answer_and_replays_it(project: Project) -> None:
    """`POST /v1/check` runs without a transaction (it only reads); with a key, its answer
    is stored once made and replayed byte for byte, even after the balance changed."""
    await project.price("_default", 1, 1)
    await project.user("u", credits=5)
    check = {"user_id": "u", "model": "m", "provisional_tokens": {"input_tokens": 1000}}
    headers = {"Idempotency-Key": "check-1"}
    first = await project.post("/v1/check", check, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["available"] == 5
    await project.post("/v1/users/u/credits", {"amount": 2})
    again = await project.post("/v1/check", check, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    fresh = await project.post("/v1/check", check)
    assert fresh.json()["available"] == 7
    reused = await project.post("/v1/check", {**check, "user_id": "v"}, headers=headers)
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")


async def test_a_keyed_check_stores_a_business_error(project: Project) -> None:
    await project.user("u", credits=5)
    check = {"user_id": "u", "model": "unpriced", "provisional_tokens": {"input_tokens": 1}}
    headers = {"Idempotency-Key": "check-2"}
    first = await project.post("/v1/check", check, headers=headers)
    assert first.status_code == 422, first.text
    assert first.json()["code"] == "unknown_model"
    await project.price("unpriced", 1, 1)
    again = await project.post("/v1/check", check, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert (await project.post("/v1/check", check)).status_code == 200


@pytest.fixture
def key_row_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """For every transaction that commits: the rows of idempotency_keys it inserted and
    updated. Read from the backend's own counters (pg_stat_xact_user_tables) right after
    BEGIN and right before COMMIT: those also hold earlier transactions' counts not yet
    flushed, but nothing is flushed inside a transaction, so the difference is exact."""
    original = session_module.send
    at_begin: dict[int, tuple[int, int]] = {}
    writes: list[tuple[int, int]] = []

    async def counts(raw: asyncpg.Connection) -> tuple[int, int]:
        row = await raw.fetchrow(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relid = 'idempotency_keys'::regclass"
        )
        return row["n_tup_ins"], row["n_tup_upd"]

    async def send(raw: asyncpg.Connection, sql: str) -> str:
        if sql.startswith("BEGIN"):
            status = await original(raw, sql)
            at_begin[id(raw)] = await counts(raw)
            return status
        if not sql.endswith("COMMIT"):
            return await original(raw, sql)
        riding = sql.removesuffix("COMMIT").rstrip().removesuffix(";")
        if riding:
            await original(raw, riding)
        (ins, upd), (ins0, upd0) = await counts(raw), at_begin.pop(id(raw))
        writes.append((ins - ins0, upd - upd0))
        return await original(raw, "COMMIT")

    monkeypatch.setattr(session_module, "send", send)
    return writes


START = {"user_id": "u", "model": "m", "provisional_tokens": {"input_tokens": 1000}}


async def test_a_keyed_start_and_complete_each_write_their_key_row_once(
    project: Project, key_row_writes: list[tuple[int, int]], general_path: None
) -> None:
    """The general path inserts the key's row, response and all, with COMMIT: one heap
    write, no in-flight row updated later. A replay writes nothing. (The fast path inserts
    it once in the one statement that makes the change: tests/transactions/test_fast.py.)"""
    await project.price("_default", 1, 1)
    await project.user("u", credits=10)
    key_row_writes.clear()
    started = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "s"})
    assert started.status_code == 201, started.text
    assert [w for w in key_row_writes if w != (0, 0)] == [(1, 0)]
    key_row_writes.clear()
    replay = await project.post("/v1/transactions/start", START, headers={"Idempotency-Key": "s"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert [w for w in key_row_writes if w != (0, 0)] == []
    key_row_writes.clear()
    txn = started.json()["transaction_id"]
    done = await project.post(
        f"/v1/transactions/{txn}/complete", {"success": True}, headers={"Idempotency-Key": "c"}
    )
    assert done.status_code == 200, done.text
    assert [w for w in key_row_writes if w != (0, 0)] == [(1, 0)]


@pytest.mark.parametrize("same_body", [True, False], ids=["replayed", "reused"])
@pytest.mark.parametrize("committed", [True, False], ids=["before-commit", "during-commit"])
async def test_a_key_row_stored_meanwhile_without_the_lock_rolls_the_request_back_to_it(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    db: Database,
    same_body: bool,
    committed: bool,
) -> None:
    """A writer that does not take the key's lock (``store_once``: a business error, a read)
    may store the key's row while a request that found none runs. That request's COMMIT then
    fails on the primary key (at once, or once the writer commits), everything it did rolls
    back, and it runs again: the stored row is replayed (409 reused for another body), never
    a second effect."""
    await project.user("u")
    stored_for = {"amount": 3} if same_body else {"amount": 4}
    writer = await asyncpg.connect(database_url)
    try:
        async with held_in_flight(project, monkeypatch, "meanwhile", amount=3) as first:
            tx = writer.transaction()
            await tx.start()
            assert await _store_grant_answer(
                writer,
                project,
                "meanwhile",
                stored_for,
                402,
                "application/problem+json",
                b'{"stored":true}',
            )
            if committed:
                await tx.commit()
                r = await first.finish()
            else:
                finishing = asyncio.create_task(first.finish())
                # Its INSERT at COMMIT waits for our uncommitted row; then we commit.
                await _until(writer, _WAITING_FOR_US)
                await tx.commit()
                r = await finishing
    finally:
        await writer.close()
    if same_body:
        assert (r.status_code, r.content) == (402, b'{"stored":true}')
        assert r.headers["idempotent-replayed"] == "true"
    else:
        assert (r.status_code, r.json()["code"]) == (409, "idempotency_key_reused")
    assert (await balance(project, "u"))["total"] == 0, "the request's grant rolled back"
    assert body(await project.get("/v1/users/u/grants"))["data"] == []
    await assert_ledger_consistent(db)


_WAITING_FOR_US = """
SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted
               AND transactionid::text = pg_current_xact_id()::text)
"""


async def test_only_the_key_rows_primary_key_is_a_row_stored_meanwhile(database_url: str) -> None:
    """The one unique violation that sends a keyed request round again is its key's row
    meeting another; any other stays the error it is."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            key_row = (uuid.uuid4(), "k", "POST", "/p", "h", 201, "{}", b"", timedelta(hours=1))
            insert = (
                "INSERT INTO idempotency_keys (project_id, key, method, path, request_hash, "
                "status_code, headers, body, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, now() + $9)"
            )
            await conn.execute(insert, *key_row)
            with pytest.raises(asyncpg.UniqueViolationError) as same_key:
                async with conn.transaction():
                    await conn.execute(insert, *key_row)
            await conn.execute("CREATE TEMP TABLE other (k int PRIMARY KEY) ON COMMIT DROP")
            await conn.execute("INSERT INTO other VALUES (1)")
            with pytest.raises(asyncpg.UniqueViolationError) as other_table:
                async with conn.transaction():
                    await conn.execute("INSERT INTO other VALUES (1)")
            raise _RollBack()
    except _RollBack:
        pass
    finally:
        await conn.close()
    assert idem_repo.duplicate(same_key.value)
    assert not idem_repo.duplicate(other_table.value)
    assert not idem_repo.duplicate(asyncpg.LockNotAvailableError("lock timeout"))


class _RollBack(Exception):
    pass
