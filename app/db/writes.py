"""Data-modifying SQL that can ride along with another statement, saving round trips.

A ``Write`` is one INSERT/UPDATE with its own parameters numbered from ``$1``. ``compose``
prefixes a statement with writes as ``WITH`` items, renumbering their parameters after the
statement's own. PostgreSQL runs every data-modifying ``WITH`` item exactly once, in the same
snapshot, so carried writes must touch rows the main statement does not (they do: a
transaction row or an outbox event riding on a balance change).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import literals as lit
from app.db.session import commit_with, connection_info, driver

_PREPARED_WRITES = "creditd.prepared_writes"

_PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class Write:
    sql: str
    args: tuple[Any, ...]


def _shift(sql: str, offset: int) -> str:
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


@lru_cache(maxsize=256)
def _compose_sql(main: str, main_params: int, carried: tuple[tuple[str, int], ...]) -> str:
    items, offset = [], main_params
    for i, (sql, count) in enumerate(carried):
        items.append(f"carried_{i} AS ({_shift(sql, offset)})")
        offset += count
    head = main.lstrip()
    if head[:4].upper() == "WITH":
        return f"WITH {', '.join(items)}, {head[4:].lstrip()}"
    return f"WITH {', '.join(items)} {head}"


def compose(main: str, args: Sequence[Any], writes: Sequence[Write]) -> tuple[str, list[Any]]:
    """``main`` carrying ``writes``, and the combined parameter list."""
    if not writes:
        return main, list(args)
    carried = tuple((w.sql, len(w.args)) for w in writes)
    combined = list(args)
    for w in writes:
        combined.extend(w.args)
    return _compose_sql(main, len(args), carried), combined


async def run(session: AsyncSession, writes: Sequence[Write], *, at_commit: bool = False) -> None:
    """Perform ``writes`` in one statement (with ``at_commit``: in COMMIT's round trip)."""
    if writes:
        sql, args = compose(writes[0].sql, writes[0].args, writes[1:])
        if at_commit:
            await run_at_commit(session, sql, args)
        else:
            await driver(session).execute(sql, *args)


async def run_at_commit(session: AsyncSession, sql: str, args: Sequence[Any]) -> None:
    """Perform ``sql`` with COMMIT, in its round trip: for a request's last write, whose
    result nobody reads. It is prepared on the connection once (its parameter types inferred
    as for any statement) and executed with literal arguments; errors surface at COMMIT and
    roll everything back. Arguments without a literal form go as a statement of their own."""
    try:
        literals = [lit.value(arg) for arg in args]
    except (TypeError, ValueError):
        await driver(session).execute(sql, *args)
        return
    name = await _prepared(session, sql)
    commit_with(
        session, f"EXECUTE {name}({', '.join(literals)})" if literals else f"EXECUTE {name}"
    )


async def _prepared(session: AsyncSession, sql: str) -> str:
    """The name ``sql`` is prepared under on the session's connection (prepared now if new:
    a prepared statement outlives a rollback, and lasts as long as the connection)."""
    name = "creditd_w_" + hashlib.sha256(sql.encode()).hexdigest()[:24]
    done: set[str] = connection_info(session).setdefault(_PREPARED_WRITES, set())
    if name not in done:
        await driver(session).execute(f"PREPARE {name} AS {sql}")
        done.add(name)
    return name
