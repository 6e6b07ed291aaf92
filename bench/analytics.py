"""Analytics at scale: ~10M charges' ledger rows and their usage_daily rollup, the rollup
worker closing the finished days into the per-user and per-model day tables, then the plans
and timings of the queries behind GET /v1/analytics/spend and /summary.

    .venv/bin/python -m bench.analytics [--charges N] [--keep] [--reuse]

Uses DATABASE_URL's server or an embedded one in .creditd/analytics; creates a fresh database,
migrates it, generates the data with INSERT ... SELECT generate_series, runs VACUUM ANALYZE,
closes every finished day with the worker's own code (timing each day), then times the
repository's own statements (the ones the service runs) and writes bench/ANALYTICS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from sqlalchemy import Select
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from app.analytics import repository as repo
from app.analytics import rollup
from app.analytics.schemas import GroupBy
from app.cli import run_migrations
from app.core.settings import DatabaseSettings
from app.db import embedded
from app.db.engine import create_engine
from app.db.session import Database

DB_NAME = "creditd_analytics"
OUT = Path(__file__).resolve().parent / "ANALYTICS.md"
DAYS = 90
RUNS = 5

BIG = uuid.UUID("00000000-0000-7000-8000-00000000b1b1")
SMALL = [uuid.UUID(f"00000000-0000-7000-8000-0000000000{i:02}") for i in range(1, 4)]


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    charges: int
    users: int
    models: int
    features: int  # plus '' (no feature)


# A uniform [0, 1) number from charge number ``i`` and stream ``k``: deterministic, so the
# ledger rows and the rollup rows are computed from the same charges without a staging table.
_UNIFORM = """
CREATE OR REPLACE FUNCTION pg_temp.u(i bigint, k bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(i, k) & 281474976710655)::float8 / 281474976710656 $$
"""

# One row per charge of tenant $1. Users are skewed (user n has weight ~ n^-2/3: the top 1%
# make ~20% of the charges); each user mostly sticks to one model and two features, as real
# traffic does; days spread evenly over the last DAYS days up to today.
_CHARGES = """
    SELECT c.i,
           'user-' || c.un AS user_id,
           'model-' || ((c.un * 7 + floor(3 * pg_temp.u(c.i, 3) ^ 2)::int) % $3::int) AS model,
           CASE WHEN (c.un + floor(2 * pg_temp.u(c.i, 4))::int) % ($4::int + 1) = 0 THEN ''
                ELSE 'feature-' || ((c.un + floor(2 * pg_temp.u(c.i, 4))::int) % ($4::int + 1))
           END AS feature,
           round((0.001 + 2 * pg_temp.u(c.i, 5) ^ 2)::numeric, 6) AS credits,
           ($5::date - floor($6::int * pg_temp.u(c.i, 2))::int)::timestamp AT TIME ZONE 'UTC'
             + pg_temp.u(c.i, 6) * interval '1 day' AS at
    FROM (SELECT i, floor($2::int * pg_temp.u(i, 1) ^ 3)::int AS un
          FROM generate_series($7::bigint, $8::bigint) AS i) AS c
"""

_PROJECT = "INSERT INTO projects (id, name) VALUES ($1, $2)"
_ACCOUNTS = """
    INSERT INTO accounts (id, project_id, total)
    SELECT md5($1::uuid::text || n)::uuid, $1::uuid, 0 FROM generate_series(0, $2::int - 1) AS n
"""
_USERS = """
    INSERT INTO users (project_id, id, account_id)
    SELECT $1::uuid, 'user-' || n, md5($1::uuid::text || n)::uuid
    FROM generate_series(0, $2::int - 1) AS n
"""
_LEDGER = f"""
    INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                total_after, held_after, created_at)
    SELECT $1::uuid, md5($1::uuid::text || substr(user_id, 6))::uuid, user_id, 'usage',
           -credits, 0, 0, 0, at
    FROM ({_CHARGES}) AS charge
"""
_ROLLUP = f"""
    INSERT INTO usage_daily (project_id, day, user_id, model, feature, credits, transactions)
    SELECT $1::uuid, (at AT TIME ZONE 'UTC')::date, user_id, model, feature, sum(credits), count(*)
    FROM ({_CHARGES}) AS charge
    GROUP BY 2, 3, 4, 5
    ORDER BY 2  -- the app adds each day's rows on that day: the heap is in day order
"""


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _tenants(charges: int) -> list[Tenant]:
    small = max(charges // 50, 1)
    big = Tenant(BIG, "big", charges - small * len(SMALL), 50_000, 10, 5)
    return [big, *(Tenant(pid, f"small-{i}", small, 500, 3, 2) for i, pid in enumerate(SMALL))]


async def _generate(url: str, tenants: list[Tenant], today: date) -> list[str]:
    notes: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET work_mem = '256MB'; SET maintenance_work_mem = '512MB'")
        try:
            # Skips the per-row foreign-key triggers while loading (the data is consistent by
            # construction); it changes nothing in the tables, indexes or plans measured.
            await conn.execute("SET session_replication_role = replica")
        except asyncpg.InsufficientPrivilegeError:
            notes.append("foreign-key checks stayed on during the load (not a superuser)")
        await conn.execute(_UNIFORM)
        first = 1
        for t in tenants:
            began = time.perf_counter()
            await conn.execute(_PROJECT, t.id, t.name)
            await conn.execute(_ACCOUNTS, t.id, t.users)
            await conn.execute(_USERS, t.id, t.users)
            last = first + t.charges - 1
            step = 1_000_000
            for lo in range(first, last + 1, step):
                hi = min(lo + step - 1, last)
                args = (t.id, t.users, t.models, t.features, today, DAYS, lo, hi)
                await conn.execute(_LEDGER, *args)
                print(f"  {t.name}: ledger rows {hi - first + 1:,}/{t.charges:,}", flush=True)
            args = (t.id, t.users, t.models, t.features, today, DAYS, first, last)
            await conn.execute(_ROLLUP, *args)
            print(f"  {t.name}: done in {time.perf_counter() - began:.0f} s", flush=True)
            first = last + 1
        began = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) usage_daily")
        await conn.execute("VACUUM (ANALYZE) ledger_entries")
        await conn.execute("ANALYZE")
        print(f"  vacuum analyze: {time.perf_counter() - began:.0f} s", flush=True)
    finally:
        await conn.close()
    return notes


@dataclass(frozen=True)
class Case:
    name: str
    tenant: Tenant
    days: int
    group_by: GroupBy | None  # None: the summary

    def window(self, today: date) -> tuple[date, date]:
        end = today + timedelta(days=1)
        return end - timedelta(days=self.days), end

    def statement(self, today: date, closed: date | None) -> Select[Any]:
        start, end = self.window(today)
        if self.group_by is None:
            return repo.summary_query(self.tenant.id, start=start, end=end, closed=closed)
        return repo.spend_query(
            self.tenant.id, group_by=self.group_by, start=start, end=end, limit=20, closed=closed
        )

    def call(self, db: Database, today: date) -> Callable[[], Awaitable[object]]:
        start, end = self.window(today)

        async def run() -> object:
            async with db.transaction() as session:
                if self.group_by is None:
                    return await repo.summary(session, self.tenant.id, start=start, end=end)
                return await repo.spend(
                    session,
                    self.tenant.id,
                    group_by=self.group_by,
                    start=start,
                    end=end,
                    limit=20,
                )

        return run


def _cases(tenants: list[Tenant]) -> list[Case]:
    big, small = tenants[0], tenants[1]
    cases = [Case(f"spend user {d}d", big, d, "user") for d in (1, 7, 30, 90)]
    cases += [Case(f"spend {g} 30d", big, 30, g) for g in ("model", "feature", "day")]
    cases += [Case("spend day 90d", big, 90, "day")]
    cases += [Case(f"summary {d}d", big, d, None) for d in (1, 7, 30, 90)]
    cases += [Case("spend user 30d (small)", small, 30, "user")]
    cases += [Case("summary 30d (small)", small, 30, None)]
    return cases


@dataclass
class Result:
    case: Case
    median_ms: float
    runs_ms: list[float]
    rows: int
    plan: str


@dataclass
class Closing:
    days: int
    total_s: float
    median_day_s: float
    max_day_s: float
    closed_through: date | None


async def _close_days(db: Database) -> Closing:
    """What the rollup worker does after downtime: close every finished day, one transaction
    each, oldest first."""
    grace = rollup.DEFAULT_GRACE
    times: list[float] = []
    while True:
        began = time.perf_counter()
        async with db.transaction() as session:
            day = await rollup.close_next_day(session, now=datetime.now(UTC), grace=grace)
        if day is None:
            break
        times.append(time.perf_counter() - began)
        print(f"  closed {day}: {times[-1] * 1000:.0f} ms", flush=True)
    async with db.transaction() as session:
        closed = await repo.closed_through(session)
    return Closing(
        len(times),
        sum(times),
        statistics.median(times) if times else 0.0,
        max(times, default=0.0),
        closed,
    )


async def _measure(
    db: Database, url: str, cases: list[Case], today: date, closed: date | None
) -> list[Result]:
    results: list[Result] = []
    dialect = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(repo.TUNE.replace("LOCAL ", ""))  # what the repository sets per call
        for case in cases:
            run = case.call(db, today)
            rows = await run()  # warm-up
            times = []
            for _ in range(RUNS):
                began = time.perf_counter()
                await run()
                times.append((time.perf_counter() - began) * 1000)
            compiled = case.statement(today, closed).compile(dialect=dialect)
            params = [compiled.params[name] for name in compiled.positiontup or []]
            explain = "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled)
            plan = "\n".join(r[0] for r in await conn.fetch(explain, *params))
            count = len(rows) if isinstance(rows, list) else 1
            result = Result(case, statistics.median(times), times, count, plan)
            results.append(result)
            print(f"  {case.name:<28} median {result.median_ms:8.1f} ms", flush=True)
    finally:
        await conn.close()
    return results


async def _vacuum(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) usage_user_days, usage_user_weeks, usage_model_days")
    finally:
        await conn.close()


async def _sizes(url: str) -> list[tuple[str, int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname, c.reltuples::bigint,
                   pg_size_pretty(pg_total_relation_size(c.oid))
            FROM pg_class c
            WHERE c.relname IN ('ledger_entries', 'usage_daily', 'usage_user_days',
                                'usage_user_weeks', 'usage_model_days', 'users', 'accounts')
            ORDER BY c.relname
            """
        )
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await conn.close()


async def _settings(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        names = ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit")
        values = [f"{n}={await conn.fetchval(f'SHOW {n}')}" for n in names]
        return f"PostgreSQL {version}; " + ", ".join(values)
    finally:
        await conn.close()


def _report(
    results: list[Result],
    sizes: list[tuple[str, int, str]],
    tenants: list[Tenant],
    setup: str,
    load_s: float,
    notes: list[str],
    closing: Closing,
) -> str:
    lines = [
        "# Analytics at 10M ledger rows",
        "",
        "Generated by `.venv/bin/python -m bench.analytics`; do not edit by hand.",
        "",
        f"- Server: {setup}; {os.cpu_count()} CPUs.",
        f"- Data: {sum(t.charges for t in tenants):,} charges over the last {DAYS} UTC days: "
        + "; ".join(
            f"{t.name}: {t.charges:,} charges, {t.users:,} users, {t.models} models, "
            f"{t.features} features + none"
            for t in tenants
        )
        + f". Loaded in {load_s:.0f} s.",
        *(f"- Note: {n}" for n in notes),
        f"- Days closed by the rollup worker's code in this run: {closing.days} in "
        f"{closing.total_s:.1f} s (median {closing.median_day_s * 1000:.0f} ms, max "
        f"{closing.max_day_s * 1000:.0f} ms per day, one transaction each); closed through "
        f"{closing.closed_through}. Windows read closed days from usage_user_days / "
        "usage_model_days (per-user windows: whole ISO weeks from usage_user_weeks) and today "
        "from usage_daily.",
        "",
        "| table | rows | size (with indexes) |",
        "|---|---:|---:|",
        *(f"| {name} | {rows:,} | {size} |" for name, rows, size in sizes),
        "",
        f"Median of {RUNS} runs (after one warm-up) through `app.analytics.repository`, "
        "the functions the service calls (one pooled connection, one transaction each); "
        "limit 20.",
        "",
        "| case | tenant | window | rows returned | median ms | runs ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        runs = ", ".join(f"{t:.1f}" for t in r.runs_ms)
        lines.append(
            f"| {r.case.name} | {r.case.tenant.name} | {r.case.days} d | {r.rows} | "
            f"{r.median_ms:.1f} | {runs} |"
        )
    lines += ["", "## Plans (EXPLAIN (ANALYZE, BUFFERS))", ""]
    for r in results:
        lines += [f"### {r.case.name}", "", "```", r.plan, "```", ""]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    base = os.environ.get("DATABASE_URL")
    if not base:
        server = embedded.start(Path(".creditd/analytics"))
        base = server.url()
    url = _with_database(base, DB_NAME)
    tenants = _tenants(args.charges)
    today = datetime.now(UTC).date()
    load_s = 0.0
    notes: list[str] = []
    if not args.reuse:
        admin = await asyncpg.connect(_with_database(base, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await admin.close()
        await asyncio.to_thread(run_migrations, url)
        print(f"generating {args.charges:,} charges into {DB_NAME} ...", flush=True)
        began = time.perf_counter()
        notes = await _generate(url, tenants, today)
        load_s = time.perf_counter() - began
    else:
        notes.append("reused a database generated by an earlier run")
        await asyncio.to_thread(run_migrations, url)
    db = Database(create_engine(DatabaseSettings(url=url), pool_size=1))
    try:
        print("closing finished days ...", flush=True)
        closing = await _close_days(db)
        await _vacuum(url)
        print("measuring ...", flush=True)
        results = await _measure(db, url, _cases(tenants), today, closing.closed_through)
    finally:
        await db.dispose()
    sizes = await _sizes(url)
    setup = await _settings(url)
    report = _report(results, sizes, tenants, setup, load_s, notes, closing)
    OUT.write_text(report + "\n")
    print(f"wrote {OUT}")
    if not args.keep and not args.reuse:
        admin = await asyncpg.connect(_with_database(base, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        finally:
            await admin.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.analytics", description=__doc__)
    parser.add_argument("--charges", type=int, default=10_000_000, help="ledger rows to make")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database again")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
