"""Carried writes: parameter renumbering and one-statement execution against PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from app.db.session import Database, driver
from app.db.writes import Write, compose, run, run_at_commit


def test_compose_renumbers_carried_parameters_after_the_main_statement() -> None:
    sql, args = compose(
        "SELECT $1::int + $2::int",
        [1, 2],
        [
            Write("INSERT INTO t (a, b) VALUES ($1, $2)", (3, 4)),
            Write("DELETE FROM u WHERE x = $1", (5,)),
        ],
    )
    assert sql == (
        "WITH carried_0 AS (INSERT INTO t (a, b) VALUES ($3, $4)), "
        "carried_1 AS (DELETE FROM u WHERE x = $5) SELECT $1::int + $2::int"
    )
    assert args == [1, 2, 3, 4, 5]


def test_compose_merges_into_a_statement_that_has_its_own_with() -> None:
    sql, _ = compose(
        "WITH x AS (SELECT $1::int AS v) SELECT v FROM x", [1], [Write("SELECT $1", (2,))]
    )
    assert sql == "WITH carried_0 AS (SELECT $2), x AS (SELECT $1::int AS v) SELECT v FROM x"


def test_compose_without_writes_is_the_main_statement() -> None:
    assert compose("SELECT $1", [7], []) == ("SELECT $1", [7])


async def test_run_performs_every_write_in_one_transaction(db: Database) -> None:
    async with db.transaction() as session:
        conn = driver(session)
        await conn.execute("CREATE TEMP TABLE carried_test (v int) ON COMMIT DROP")
        await run(
            session,
            [
                Write("INSERT INTO carried_test VALUES ($1)", (1,)),
                Write("INSERT INTO carried_test VALUES ($1)", (2,)),
            ],
        )
        assert sorted(r[0] for r in await conn.fetch("SELECT v FROM carried_test")) == [1, 2]


_TABLE = """CREATE TABLE IF NOT EXISTS at_commit_test (
    id uuid PRIMARY KEY, note text, amount numeric, at timestamptz, flag boolean, doc jsonb,
    raw bytea, n bigint CHECK (n >= 0))"""


async def _rows(db: Database) -> list[asyncpg.Record]:
    async with db.transaction() as session:
        return list(await driver(session).fetch("SELECT * FROM at_commit_test ORDER BY note"))


@pytest.fixture
async def at_commit_table(db: Database) -> AsyncIterator[None]:
    async with db.transaction() as session:
        await driver(session).execute(_TABLE)
        await driver(session).execute("TRUNCATE at_commit_test")
    yield
    async with db.transaction() as session:
        await driver(session).execute("DROP TABLE at_commit_test")


_INSERT = "INSERT INTO at_commit_test VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"


async def test_a_write_at_commit_lands_with_the_commit_as_sent(
    db: Database, at_commit_table: None
) -> None:
    """Every kind of argument the hot path sends, as literals in COMMIT's round trip, reads
    back as itself; the statement is prepared once per connection and reused."""
    at = datetime(2026, 11, 29, 7, 0, 1, 123456, tzinfo=UTC)
    rows = [
        (
            uuid.uuid4(),
            "it's \\ 'quoted'",
            Decimal("-0.000001"),
            at,
            True,
            '{"a": "b\'c"}',
            b"\x00'",
            0,
        ),
        (uuid.uuid4(), "plain", Decimal("1E+3"), None, False, None, None, 2**62),
    ]
    for done, row in enumerate(rows):
        async with db.transaction() as session:
            await run_at_commit(session, _INSERT, row)
            count = await driver(session).fetchval("SELECT count(*) FROM at_commit_test")
            assert count == done  # not yet: it goes with the COMMIT
    found = await _rows(db)
    assert [tuple(r.values()) for r in found] == [
        (rows[0][0], rows[0][1], Decimal("-0.000001"), at, True, {"a": "b'c"}, b"\x00'", 0),
        (rows[1][0], "plain", Decimal("1000"), None, False, None, None, 2**62),
    ]


async def _insert_then_fail_at_commit(db: Database) -> None:
    async with db.transaction() as session:
        await driver(session).execute(_INSERT, uuid.uuid4(), "before", 1, None, None, None, None, 1)
        failing = (uuid.uuid4(), "at commit", 1, None, None, None, None, -1)
        await run_at_commit(session, _INSERT, failing)


async def test_a_failing_write_at_commit_rolls_the_whole_transaction_back(
    db: Database, at_commit_table: None
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert_then_fail_at_commit(db)
    assert await _rows(db) == []
    # The connection is fit for the next request (the statement stays prepared where it was).
    async with db.transaction() as session:
        await run_at_commit(session, _INSERT, (uuid.uuid4(), "next", 1, None, None, None, None, 1))
    assert [r["note"] for r in await _rows(db)] == ["next"]


async def test_an_argument_without_a_literal_goes_as_a_parameter_right_away(
    db: Database, at_commit_table: None
) -> None:
    """A value the literals do not render (an array here) makes the statement run at once,
    with real parameters, instead of with the COMMIT."""
    async with db.transaction() as session:
        await run_at_commit(
            session,
            "INSERT INTO at_commit_test (id, note) VALUES ($1, array_to_string($2::text[], ','))",
            (uuid.uuid4(), ["a", "b"]),
        )
        assert await driver(session).fetchval("SELECT note FROM at_commit_test") == "a,b"
