"""`--seed-users N --seed-ledger M`: a large dataset seeded with SQL, and the hot statements' plans.

The population is users ``L0000000`` … (bench/loadgen.py ``large_user_id``) of the benchmark's
project, each with its own account, one grant and a history of completed charges, written with
``generate_series`` straight into users / accounts / grants / transactions / ledger_entries, in
batches of users, consistent with every `creditd verify` invariant:

- per user: one grant of SEED_CREDITS (a ``grant`` ledger entry), then C = (M/N - 1) // 2
  completed charges, each a ``completed`` transaction (hold HOLD, credits_used CHARGE) with its
  two ledger entries (``hold``: +HOLD held; ``usage``: -CHARGE total, -HOLD held), ids in order,
  running ``total_after`` / ``held_after`` exact;
- account: total = grant remaining = SEED_CREDITS - C * CHARGE, held 0, debt 0.

Not seeded (what the benchmark does not need, and no invariant requires): usage_daily and the
analytics rollups of those charges, events, idempotency keys. Ids are UUIDv7 where the server
has ``uuidv7()`` (PostgreSQL 18), else random UUIDs.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.credits.repository import _CHANGE
from app.transactions.repository import (
    _LOCK_ACCOUNT,
    _LOCK_WITH_ACCOUNT,
    FAST_COMPLETE_READ,
    FAST_START_READ,
)

SEED_CREDITS = 1_000_000
HOLD = 2
CHARGE = 1
BATCH_USERS = 100_000
MODEL = "gpt-4o"

_BATCH = """
CREATE TEMP TABLE seed_u ON COMMIT DROP AS
    SELECT i, 'L' || lpad(i::text, 7, '0') AS uid, {uuid}() AS acc, {uuid}() AS gid
    FROM generate_series($1::int, $2::int - 1) AS i;
CREATE TEMP TABLE seed_t ON COMMIT DROP AS
    SELECT u.i, u.uid, u.acc, k, {uuid}() AS tid FROM seed_u u, generate_series(1, $3::int) AS k;
INSERT INTO accounts (id, project_id, total, held, debt)
    SELECT acc, $4, $5::numeric - $3::int * $7::numeric, 0, 0 FROM seed_u;
INSERT INTO users (project_id, id, account_id) SELECT $4, uid, acc FROM seed_u;
INSERT INTO grants (id, project_id, account_id, user_id, amount, remaining, source, category)
    SELECT gid, $4, acc, uid, $5, $5::numeric - $3::int * $7::numeric, 'bench_seed', 'promotional'
    FROM seed_u;
INSERT INTO transactions (id, project_id, account_id, user_id, model, status, hold_amount,
                          credits_used, provisional_tokens, finalized_tokens, expires_at,
                          completed_at, created_at, updated_at)
    SELECT tid, $4, acc, uid, '{model}', 'completed', $6, $7,
           '{{"input_tokens": 100, "output_tokens": 100}}',
           '{{"input_tokens": 50, "output_tokens": 80}}',
           now() - make_interval(mins => $3::int - k) + interval '10 minutes',
           now() - make_interval(mins => $3::int - k), now() - make_interval(mins => $3::int - k),
           now() - make_interval(mins => $3::int - k)
    FROM seed_t;
INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                            total_after, held_after, transaction_id, grant_id, created_at)
    SELECT $4, acc, uid, kind, amount, held_amount, total_after, held_after, tid, gid, at
    FROM (
        SELECT i, 0 AS seq, acc, uid, 'grant' AS kind, $5::numeric AS amount,
               0::numeric AS held_amount, $5::numeric AS total_after, 0::numeric AS held_after,
               NULL::uuid AS tid, gid, now() - make_interval(mins => $3::int + 1) AS at
        FROM seed_u
        UNION ALL
        SELECT i, 2 * k - 1, acc, uid, 'hold', 0, $6, $5::numeric - (k - 1) * $7::numeric, $6,
               tid, NULL, now() - make_interval(mins => $3::int - k)
        FROM seed_t
        UNION ALL
        SELECT i, 2 * k, acc, uid, 'usage', -$7::numeric, -$6::numeric,
               $5::numeric - k * $7::numeric, 0, tid, NULL,
               now() - make_interval(mins => $3::int - k) + interval '1 second'
        FROM seed_t
        ORDER BY 1, 2
    ) AS e;
"""


@dataclass(frozen=True)
class Seeded:
    """What the large seed wrote and how long it took."""

    users: int
    ledger_entries: int
    transactions: int
    seed_s: float
    vacuum_s: float
    sizes: dict[str, str]


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def _asyncpg_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


async def project_id(url: str, name: str = "bench") -> uuid.UUID:
    """The benchmark project's id."""
    conn = await asyncpg.connect(_asyncpg_url(url))
    try:
        pid: uuid.UUID = await conn.fetchval("SELECT id FROM projects WHERE name = $1", name)
        return pid
    finally:
        await conn.close()


async def seed_large(url: str, project: uuid.UUID, users: int, ledger: int) -> Seeded:
    """Seed `users` users with about `ledger` ledger entries in all; VACUUM ANALYZE afterwards."""
    charges = max(0, (ledger // users - 1) // 2)
    conn = await asyncpg.connect(_asyncpg_url(url))
    try:
        has_v7 = int(await conn.fetchval("SHOW server_version_num")) >= 180000
        sql = _BATCH.format(uuid="uuidv7" if has_v7 else "gen_random_uuid", model=MODEL)
        started = time.perf_counter()
        for first in range(0, users, BATCH_USERS):
            last = min(users, first + BATCH_USERS)
            async with conn.transaction():
                # Several statements with parameters: a session setting carries them.
                await _execute_batch(conn, sql, first, last, charges, project)
            done = time.perf_counter() - started
            log(f"  seeded users {last:,}/{users:,} ({done:.0f} s)")
        seed_s = time.perf_counter() - started
        started = time.perf_counter()
        for table in ("users", "accounts", "grants", "transactions", "ledger_entries"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        vacuum_s = time.perf_counter() - started
        sizes = {
            table: await conn.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size($1::regclass))", table
            )
            for table in ("users", "accounts", "grants", "transactions", "ledger_entries")
        }
        total_ledger = int(await conn.fetchval("SELECT count(*) FROM ledger_entries"))
        total_txn = int(await conn.fetchval("SELECT count(*) FROM transactions"))
    finally:
        await conn.close()
    return Seeded(users, total_ledger, total_txn, seed_s, vacuum_s, sizes)


async def _execute_batch(
    conn: Any, sql: str, first: int, last: int, charges: int, project: uuid.UUID
) -> None:
    """Run the batch's statements one by one (asyncpg binds parameters per statement)."""
    args = {
        "$1": str(first),
        "$2": str(last),
        "$3": str(charges),
        "$4": f"'{project}'::uuid",
        "$5": str(SEED_CREDITS),
        "$6": str(HOLD),
        "$7": str(CHARGE),
    }
    for raw in sql.split(";\n"):
        statement = raw
        for name in sorted(args, reverse=True):  # all are ours: ints and a uuid
            statement = statement.replace(name, args[name])
        if statement.strip():
            await conn.execute(statement)


def _plan_text(rows: list[Any]) -> str:
    return "\n".join(r[0] for r in rows)


async def explain_hot(url: str, project: uuid.UUID, user_id: str) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the start lock, the ledger write and the complete lock for
    `user_id`, each in a transaction that is rolled back (nothing is changed or kept locked)."""
    conn = await asyncpg.connect(_asyncpg_url(url))
    plans: dict[str, str] = {}
    try:
        account = await conn.fetchrow(
            "SELECT a.id, a.total, a.held FROM users u JOIN accounts a ON a.id = u.account_id"
            " WHERE u.project_id = $1 AND u.id = $2",
            project,
            user_id,
        )
        txn = await conn.fetchval(
            "SELECT id FROM transactions WHERE project_id = $1 AND user_id = $2"
            " ORDER BY id DESC LIMIT 1",
            project,
            user_id,
        )
        statements: list[tuple[str, str, tuple[Any, ...]]] = [
            (
                "fast path: start's read `FAST_START_READ` (then one `creditd_fast_start` call,"
                " whose lock is the same as `_LOCK_ACCOUNT`'s and whose burn is `_CHANGE`'s)",
                FAST_START_READ,
                (project, user_id, MODEL, "a-key-with-no-row"),
            ),
            ("start lock `_LOCK_ACCOUNT`", _LOCK_ACCOUNT, (project, user_id, MODEL)),
            (
                "ledger write `_CHANGE` (a settle of 1 credit)",
                _CHANGE,
                (
                    account["id"],
                    project,
                    account["total"] - CHARGE,
                    account["held"],
                    user_id,
                    "usage",
                    -CHARGE,
                    0,
                    None,
                    None,
                    None,
                    CHARGE,
                    CHARGE,
                    None,
                ),
            ),
        ]
        if txn is not None:
            title = "fast path: complete's read `FAST_COMPLETE_READ`"
            statements.append((title, FAST_COMPLETE_READ, (project, txn, "a-key-with-no-row")))
            title = "complete lock `_LOCK_WITH_ACCOUNT`"
            statements.append((title, _LOCK_WITH_ACCOUNT, (project, txn)))
        for title, sql, args in statements:
            tr = conn.transaction()
            await tr.start()
            try:
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                plans[title] = _plan_text(rows)
            finally:
                await tr.rollback()
    finally:
        await conn.close()
    return plans
