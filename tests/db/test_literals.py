"""SQL literals of the simple-query statements (BEGIN + claim, store + COMMIT) read back by
PostgreSQL as exactly the values they were made from."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

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
