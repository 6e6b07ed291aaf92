"""SQL literals of the simple-query statements (BEGIN + claim, store + COMMIT) read back by
PostgreSQL as exactly the values they were made from."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from app.db import literals as lit

TEXTS = ["", "plain", "it's", "''", "\\", "a\\'b", "$1 $$ $tag$", "é ✓ 𝄞", "line\nbreak\ttab", "--"]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.mark.parametrize("value", TEXTS)
async def test_text_reads_back_as_itself(conn: asyncpg.Connection, value: str) -> None:
    assert await conn.fetchval(f"SELECT {lit.text(value)}::text") == value


async def test_text_refuses_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        lit.text("a\x00b")


@pytest.mark.parametrize("value", [b"", b"\x00\x01\xff", b"'\\x", bytes(range(256))])
async def test_bytea_reads_back_as_itself(conn: asyncpg.Connection, value: bytes) -> None:
    assert await conn.fetchval(f"SELECT {lit.bytea(value)}::bytea") == value


async def test_uuid_integer_and_interval(conn: asyncpg.Connection) -> None:
    some = uuid.uuid4()
    assert await conn.fetchval(f"SELECT {lit.uuid_(some)}::uuid") == some
    assert await conn.fetchval(f"SELECT {lit.integer(-42)}::integer") == -42
    ttl = timedelta(days=2, seconds=5, microseconds=7)
    assert await conn.fetchval(f"SELECT {lit.interval(ttl)}::interval") == ttl
    with pytest.raises(TypeError):
        lit.integer(True)


class _Text(str):
    """A str subclass (as an enum with str values is): rendered as its text."""


@pytest.mark.parametrize(
    ("sql_type", "item"),
    [
        ("text", "it's a \\ test"),
        ("text", _Text("sub'class")),
        ("integer", -7),
        ("bigint", 2**40),
        ("numeric", Decimal("-12.345000000")),
        ("numeric", Decimal("1E+3")),
        ("uuid", uuid.UUID("01a226b9-3f89-7000-8ae1-dc80b413cb19")),
        ("timestamptz", datetime(2026, 11, 29, 9, 56, 3, 338758, tzinfo=UTC)),
        ("date", date(2026, 2, 28)),
        ("boolean", True),
        ("boolean", False),
        ("bytea", b"\x00'\\"),
        ("jsonb", '{"a": "b\'c"}'),
    ],
)
async def test_value_is_read_with_the_parameter_type(
    conn: asyncpg.Connection, sql_type: str, item: object
) -> None:
    """An untyped literal, as a prepared statement's argument, reads back as the value."""
    name = f"lit_{sql_type}"
    await conn.execute(f"PREPARE {name}({sql_type}) AS SELECT $1")
    try:
        got = await conn.fetchval(f"EXECUTE {name}({lit.value(item)})")
    finally:
        await conn.execute(f"DEALLOCATE {name}")
    assert got == item


async def test_value_null_and_unknown_types() -> None:
    assert lit.value(None) == "NULL"
    with pytest.raises(TypeError):
        lit.value(1.5)  # never a float: money is Decimal
    with pytest.raises(TypeError):
        lit.value(object())
