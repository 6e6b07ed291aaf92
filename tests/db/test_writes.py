"""Carried writes: parameter renumbering and one-statement execution against PostgreSQL."""

from __future__ import annotations

from app.db.session import Database, driver
from app.db.writes import Write, compose, run


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
