"""What the framework used to do for free, kept: a connection that broke is invalidated in
SQLAlchemy's pool and never handed out again; transient failures become their 503s.

Each test has its own small engine on the shared test database and kills only the backends
of that engine (``pg_terminate_backend`` of a pid it read itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import anyio
import asyncpg
import pytest
from sqlalchemy.pool import QueuePool

from app.core.settings import DatabaseSettings
from app.db.engine import create_engine
from app.db.exceptions import (
    DatabaseFault,
    DatabaseUnavailable,
    DeadlockDetected,
    LockTimeout,
    PoolTimeout,
    SerializationFailure,
    StatementTimeout,
)
from app.db.session import Database, Opening, driver


@pytest.fixture
async def small(database_url: str) -> AsyncIterator[Database]:
    """One pooled connection at most, so a reused connection would be handed out again."""
    settings = DatabaseSettings(
        url=database_url, pool_size=1, max_overflow=0, pool_timeout_seconds=0.5
    )
    database = Database(create_engine(settings))
    yield database
    await database.dispose()


async def _pid(db: Database) -> int:
    async with db.transaction() as session:
        return int(await driver(session).fetchval("SELECT pg_backend_pid()"))


async def _terminate(database_url: str, pid: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def _killed_mid_transaction(db: Database, database_url: str) -> None:
    async with db.transaction() as session:
        pid = await driver(session).fetchval("SELECT pg_backend_pid()")
        await _terminate(database_url, pid)
        await driver(session).fetchval("SELECT 1")


async def test_a_connection_killed_inside_a_transaction_is_invalidated_and_not_reused(
    small: Database, database_url: str
) -> None:
    first = await _pid(small)
    with pytest.raises(DatabaseUnavailable) as failed:
        await _killed_mid_transaction(small, database_url)
    assert failed.value.status == 503
    assert failed.value.headers["Retry-After"] == "2"
    # The broken connection went back invalidated: the next transaction gets a new one.
    assert cast(QueuePool, small.engine.pool).checkedout() == 0
    second = await _pid(small)
    assert second != first
    assert await _pid(small) == second  # and that one is kept


async def test_a_pooled_connection_killed_while_idle_is_replaced_at_checkout(
    small: Database, database_url: str
) -> None:
    async with small.transaction() as session:
        raw = driver(session)
        first = await raw.fetchval("SELECT pg_backend_pid()")
    await _terminate(database_url, first)
    for _ in range(500):  # asyncpg notices the closed socket on its own, without a query
        if raw.is_closed():
            break
        await asyncio.sleep(0.01)
    assert raw.is_closed()
    # No error at all: the checkout discarded it and connected afresh.
    assert await _pid(small) != first


async def test_a_rolled_back_transaction_keeps_its_healthy_connection(small: Database) -> None:
    first = await _pid(small)
    with pytest.raises(ValueError, match="boom"):
        async with small.transaction():
            raise ValueError("boom")
    assert await _pid(small) == first


async def _raise_sqlstate(db: Database, sqlstate: str) -> None:
    async with db.transaction() as session:
        await driver(session).execute(
            f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$"
        )


@pytest.mark.parametrize(
    ("sqlstate", "fault"),
    [
        ("55P03", LockTimeout),
        ("57014", StatementTimeout),
        ("40001", SerializationFailure),
        ("40P01", DeadlockDetected),
        ("57P03", DatabaseUnavailable),
    ],
)
async def test_transient_sqlstates_raise_their_503_and_keep_the_connection(
    small: Database, sqlstate: str, fault: type[DatabaseFault]
) -> None:
    first = await _pid(small)
    with pytest.raises(fault) as raised:
        await _raise_sqlstate(small, sqlstate)
    assert raised.value.status == 503
    assert int(raised.value.headers["Retry-After"]) >= 1
    assert await _pid(small) == first


async def _run(db: Database, sql: str) -> None:
    async with db.transaction() as session:
        await driver(session).execute(sql)


async def test_a_real_lock_wait_past_lock_timeout_is_lock_timeout(
    database_url: str,
) -> None:
    settings = DatabaseSettings(url=database_url, pool_size=1, lock_timeout_ms=200)
    db = Database(create_engine(settings))
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(7243)")
        with pytest.raises(LockTimeout):
            await _run(db, "SELECT pg_advisory_xact_lock(7243)")
    finally:
        await holder.close()
        await db.dispose()


async def test_a_real_deadlock_is_deadlock_detected(database_url: str) -> None:
    db = Database(create_engine(DatabaseSettings(url=database_url, pool_size=2)))
    both_hold_one = asyncio.Barrier(2)

    async def take(first: int, second: int) -> None:
        async with db.transaction() as session:
            await driver(session).execute("SELECT pg_advisory_xact_lock($1)", first)
            await both_hold_one.wait()
            await driver(session).execute("SELECT pg_advisory_xact_lock($1)", second)

    try:
        results = await asyncio.gather(take(81, 82), take(82, 81), return_exceptions=True)
    finally:
        await db.dispose()
    assert sorted(type(r).__name__ for r in results) == ["DeadlockDetected", "NoneType"]


async def test_no_free_connection_within_pool_timeout_is_pool_timeout(small: Database) -> None:
    async with small.transaction():
        with pytest.raises(PoolTimeout):
            await _run(small, "SELECT 1")


async def test_an_unreachable_database_is_database_unavailable(tmp_path: Path) -> None:
    url = f"postgresql://postgres@/creditd?host={tmp_path}"  # no server listens there
    db = Database(create_engine(DatabaseSettings(url=url, connect_timeout_seconds=2)))
    try:
        with pytest.raises(DatabaseUnavailable):
            await _run(db, "SELECT 1")
    finally:
        await db.dispose()


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
async def test_a_request_cancelled_mid_statement_never_hands_its_connection_on(
    small: Database, autocommit: bool
) -> None:
    """A task cancelled while its statement runs (a client gone): the connection is dropped,
    not pooled half-way through a read-only transaction or a statement."""
    started = asyncio.Event()

    async def slow() -> None:
        kind = {"autocommit": True} if autocommit else {"readonly": True}
        async with small.transaction(**kind) as session:  # type: ignore[arg-type]
            started.set()
            await driver(session).execute("SELECT pg_sleep(30)")

    # anyio's cancellation, as Starlette's task groups cancel a request whose client left: every
    # later await in the cancelled scope is cancelled too, so the rollback cannot be awaited.
    async with anyio.create_task_group() as group:
        group.start_soon(slow)
        await started.wait()
        await asyncio.sleep(0.1)
        group.cancel_scope.cancel()
    async with small.transaction() as session:
        conn = driver(session)
        assert await conn.fetchval("SHOW transaction_read_only") == "off"
        await conn.execute("CREATE TEMPORARY TABLE written (a int)")
        assert await conn.fetchval("SELECT count(*) FROM written") == 0


async def test_a_refused_opening_statement_keeps_the_connection(small: Database) -> None:
    """The statement riding with BEGIN failed on its own (an answer, not a fault): rolled
    back, the connection is pooled again, and the next transaction is a fresh one."""
    pid = await _pid(small)

    class Refused(Exception):
        pass

    opening = Opening("SELECT 1/0", lambda exc: Refused())
    with pytest.raises(Refused):
        async with small.transaction(opening=opening):
            pass
    assert await _pid(small) == pid
