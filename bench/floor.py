"""The floor: what the simplest Python HTTP service doing a start's and a complete's database
work reaches on this machine, next to pgbench on the same PostgreSQL, in the same run.

`python -m bench.floor [--runs 3] [--out bench/FLOOR.md]`, on DATABASE_URL's server or an
embedded one. Every run: pgbench TPC-B (8 clients), pgbench's hot-row script (16 clients on
one account row), then every variant of bench/floor_app.py driven by bench/loadgen.py (start
then complete, 16 clients) over 1000 users and on one hot user, then creditd itself the same
way (unless --no-creditd). The report gives the medians over the runs and each phase's ratio
to the pgbench rate of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import floor_sql
from bench.config import Options
from bench.cpu import CpuSample
from bench.loadgen import HOT_USER, PhaseSpec, user_ids
from bench.postgres import HOT_ROW_SCRIPT, PgbenchResult, Postgres, open_postgres
from bench.report import RATIO_GOAL
from bench.runner import CREDITD_DB, PGBENCH_DB, log, other_sections, prime, run_load
from bench.service import SEED_CREDITS, Service, free_port, run_process, run_service, setup
from bench.stats import PhaseResult

FLOOR_DB = "floor_bench"
FLOOR_PATH = Path(__file__).parent / "FLOOR.md"
VARIANTS = ("rt3", "fastapi-rt3", "rt1", "fastapi-rt1")
CREDITD = "creditd"  # the reference: creditd itself, same load, same run
PRIME_SECONDS = 3
SETTLE_SECONDS = 0.5  # for pgbench's backends to exit and be counted once pgbench has


@dataclass(frozen=True)
class FloorOptions:
    """The command line: the bench's options, the variants, pgbench's hot-row clients and
    whether creditd runs too."""

    bench: Options
    variants: tuple[str, ...]
    hot_row_clients: int
    creditd: bool


@dataclass(frozen=True)
class Pgbench:
    """One pgbench run, and the CPU milliseconds per transaction of PostgreSQL and of the
    pgbench client."""

    result: PgbenchResult
    postgres_ms: float
    client_ms: float


@dataclass(frozen=True)
class FloorRun:
    """One run: both pgbench rates and every phase, measured back to back."""

    tpcb: Pgbench
    hot_row: Pgbench
    phases: list[PhaseResult]


@dataclass(frozen=True)
class Measured:
    """Every run, and whether the floor's money invariants held afterwards."""

    runs: list[FloorRun]
    verified: bool
    verify_line: str


@dataclass(frozen=True)
class Row:
    """One line of the report (a phase of one run, or the medians of several)."""

    name: str
    rps: float
    ratio: float  # to the same run's pgbench rate (TPC-B, or hot-row for a hot phase)
    service_ms: float  # CPU milliseconds per request
    postgres_ms: float
    total_ms: float  # service + PostgreSQL + load generator
    service_cpu: float  # percent of one core
    postgres_cpu: float
    loadgen_cpu: float
    other_cpu: float
    start_p50: float
    start_p99: float
    complete_p50: float
    complete_p99: float
    errors: float


def phases(opts: FloorOptions, variants: tuple[str, ...]) -> list[PhaseSpec]:
    """Every variant over many users, then every variant on the hot user (creditd: no prefix)."""
    clients, keys = opts.bench.clients, opts.bench.keys
    return [
        PhaseSpec(
            f"{v}/{where}/{clients}",
            "pairs",
            clients,
            hot=hot,
            keys=keys,
            prefix="" if v == CREDITD else f"/{v}",
        )
        for where, hot in (("many", False), ("hot", True))
        for v in variants
    ]


def pgbench(pg: Postgres, clients: int, seconds: int, script: Path | None = None) -> Pgbench:
    """Run pgbench on the TPC-B tables; the client's CPU is that of our reaped children."""
    before = CpuSample.take(os.getpid(), pg.postmaster_pid())
    result = pg.pgbench_run(PGBENCH_DB, clients, seconds, script)
    time.sleep(SETTLE_SECONDS)
    after = CpuSample.take(os.getpid(), pg.postmaster_pid())
    txns = result.tps * seconds
    postgres = (after.postgres or 0.0) - (before.postgres or 0.0)
    client = after.service - before.service  # this process (idle) and pgbench, reaped
    return Pgbench(result, 1000 * postgres / txns, 1000 * client / txns)


def measure(opts: FloorOptions, pg: Postgres) -> Measured:
    """Prepare the databases, start the services, then run pgbench and the phases."""
    bench = opts.bench
    log(f"databases: {FLOOR_DB} ({bench.users} users + {HOT_USER}), {PGBENCH_DB} (pgbench -i)")
    pg.recreate_database(FLOOR_DB)
    pg.recreate_database(PGBENCH_DB)
    pg.pgbench_init(PGBENCH_DB, bench.pgbench_scale)
    accounts = [HOT_USER, *user_ids(bench.users)]
    asyncio.run(floor_sql.create(pg.url(FLOOR_DB), accounts, SEED_CREDITS))
    script = HOT_ROW_SCRIPT  # bench/hot_row.sql: TPC-B's transaction on one account row
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor_app", "--port", str(port)]
    argv += ["--workers", str(bench.service_workers), pg.url(FLOOR_DB)]
    runs = []
    with ExitStack() as stack:
        log_path = bench.data_dir / "floor.log"
        process = stack.enter_context(run_process(argv, dict(os.environ), port, log_path))
        floor = Service(process, port, admin_token="")
        log(f"floor service on 127.0.0.1:{port}; priming {PRIME_SECONDS} s per variant")
        primed = replace(bench, duration=PRIME_SECONDS, warmup=0)
        run_load(primed, floor, "", pg, phases(opts, opts.variants)[: len(opts.variants)])
        pg.psql("VACUUM ANALYZE", FLOOR_DB)
        creditd, key = None, ""
        if opts.creditd:
            pg.recreate_database(CREDITD_DB)
            log_path = bench.data_dir / "creditd.log"
            workers = bench.service_workers
            creditd = stack.enter_context(run_service(pg.url(CREDITD_DB), log_path, None, workers))
            log(f"creditd on 127.0.0.1:{creditd.port}; seeding {bench.users} users")
            key = setup(creditd, bench.users)
            prime(bench, creditd, key, pg)
        for i in range(1, bench.runs + 1):
            log(f"run {i}/{bench.runs}: pgbench TPC-B, then hot-row ({bench.duration} s each)")
            tpcb = pgbench(pg, bench.pgbench_clients, bench.duration)
            hot_row = pgbench(pg, opts.hot_row_clients, bench.duration, script)
            log(f"  TPC-B {tpcb.result.tps:.0f} tps, hot row {hot_row.result.tps:.0f} tps")
            results = run_load(bench, floor, "", pg, phases(opts, opts.variants))
            if creditd is not None:
                results += run_load(bench, creditd, key, pg, phases(opts, (CREDITD,)))
            runs.append(FloorRun(tpcb, hot_row, results))
    verified, line = asyncio.run(floor_sql.verify(pg.url(FLOOR_DB), SEED_CREDITS))
    log(f"floor database: {line}")
    return Measured(runs, verified, line)


def _per_request(cpu_percent: float, rps: float) -> float:
    """CPU milliseconds per request from percent of one core and requests per second."""
    return 10 * cpu_percent / rps if rps else 0.0


def variant(row: Row) -> str:
    """The variant a row measures (its name's first part)."""
    return row.name.split("/", 1)[0]


def is_hot(row: Row) -> bool:
    """Whether a row is a hot-user phase."""
    return "/hot/" in row.name


def rows(run: FloorRun) -> list[Row]:
    """One run's phases with their ratios to the run's pgbench rates, many users first, each
    population in the order creditd, then VARIANTS."""
    out = []
    for phase in run.phases:
        base = run.hot_row if "/hot/" in phase.name else run.tpcb
        start, complete, cpu = phase.ops["start"], phase.ops["complete"], phase.cpu
        ours = cpu["service"] + cpu.get("postgres", 0.0) + cpu["loadgen"]
        row = Row(
            name=phase.name,
            rps=phase.rps,
            ratio=phase.rps / base.result.tps,
            service_ms=_per_request(cpu["service"], phase.rps),
            postgres_ms=_per_request(cpu.get("postgres", 0.0), phase.rps),
            total_ms=_per_request(ours, phase.rps),
            service_cpu=cpu["service"],
            postgres_cpu=cpu.get("postgres", 0.0),
            loadgen_cpu=cpu["loadgen"],
            other_cpu=cpu["other"],
            start_p50=start.p50_ms,
            start_p99=start.p99_ms,
            complete_p50=complete.p50_ms,
            complete_p99=complete.p99_ms,
            errors=phase.errors,
        )
        out.append(row)
    order = (CREDITD, *VARIANTS)
    return sorted(out, key=lambda r: (is_hot(r), order.index(variant(r))))


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """Each phase's median of every column over the runs (errors: their sum)."""
    medians = []
    for same in zip(*runs, strict=True):
        values = {
            f.name: statistics.median(getattr(r, f.name) for r in same)
            for f in fields(Row)
            if f.name not in ("name", "errors")
        }
        medians.append(Row(name=same[0].name, errors=sum(r.errors for r in same), **values))
    return medians


TABLE_HEAD = (
    "| phase | req/s | x pgbench | CPU ms/req service | PostgreSQL | all three "
    "| CPU % service / PG / loadgen / other | p50 ms start / complete "
    "| p99 ms start / complete | errors |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def table(rows_: list[Row]) -> str:
    """The phases as a Markdown table."""
    lines = [TABLE_HEAD]
    for r in rows_:
        cpu = " / ".join(
            f"{v:.0f}" for v in (r.service_cpu, r.postgres_cpu, r.loadgen_cpu, r.other_cpu)
        )
        lines.append(
            f"| {r.name} | {r.rps:.0f} | {r.ratio:.2f} | {r.service_ms:.2f} | {r.postgres_ms:.2f} "
            f"| {r.total_ms:.2f} | {cpu} | {r.start_p50:.1f} / {r.complete_p50:.1f} "
            f"| {r.start_p99:.1f} / {r.complete_p99:.1f} | {r.errors:.0f} |"
        )
    return "\n".join(lines)


def pgbench_table(runs: list[FloorRun]) -> str:
    """pgbench's rates and CPU per transaction (PostgreSQL, the client), per run and median."""
    lines = [
        "| run | TPC-B tps | CPU ms/txn PostgreSQL / client | hot-row tps "
        "| CPU ms/txn PostgreSQL / client |",
        "|---|--:|--:|--:|--:|",
    ]

    def cells(values: tuple[float, ...]) -> str:
        tpcb, tpcb_pg, tpcb_client, hot, hot_pg, hot_client = values
        return (
            f"{tpcb:.0f} | {tpcb_pg:.2f} / {tpcb_client:.2f} "
            f"| {hot:.0f} | {hot_pg:.2f} / {hot_client:.2f} |"
        )

    def values(run: FloorRun) -> tuple[float, ...]:
        return tuple(
            value
            for bench in (run.tpcb, run.hot_row)
            for value in (bench.result.tps, bench.postgres_ms, bench.client_ms)
        )

    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | {cells(values(run))}")
    medians = tuple(statistics.median(column) for column in zip(*map(values, runs), strict=True))
    lines.append(f"| median | {cells(medians)}")
    return "\n".join(lines)


def markdown(opts: FloorOptions, measured: Measured, pg_version: str, where: str, load: str) -> str:
    """The report: the setup, pgbench, the phases' medians and every run."""
    bench, runs = opts.bench, measured.runs
    per_run = [rows(run) for run in runs]
    keys = "a fresh Idempotency-Key on every request" if bench.keys else "no Idempotency-Key"
    sections = [
        "# The floor: a minimal Python service next to pgbench on the same PostgreSQL",
        f"`python -m bench.floor`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: PostgreSQL "
        f"{pg_version} ({where}), {os.cpu_count()} CPUs (load average {load}); "
        f"{bench.runs} runs, each pgbench then every phase, {bench.duration} s measured "
        f"(+{bench.warmup:g} s warm-up) each.",
        f"A phase is start then complete by {bench.clients} clients of bench/loadgen.py, "
        f"{keys}, over {bench.users} users (`many`) or on one user (`hot`), on a service of "
        f"{bench.service_workers} uvicorn workers: bench/floor_app.py's variants (`rt3`: "
        "3 round trips per request, `rt1`: one PL/pgSQL call; raw ASGI, or `fastapi-`: behind "
        "FastAPI routes and pydantic models) and `creditd` itself. `x pgbench`: its "
        "start+complete requests/s over the same run's pgbench rate, TPC-B (scale "
        f"{bench.pgbench_scale}, {bench.pgbench_clients} clients) for `many`, the hot-row "
        f"script ({opts.hot_row_clients} clients, one account row) for `hot`; the goal is "
        f"{RATIO_GOAL}. CPU: ms per request of the service, PostgreSQL, and the two plus the "
        "load generator; percent of one core per process group (`other`: the rest of the "
        "machine, other tenants included).",
        f"The floor database afterwards: {measured.verify_line}. Sections after `Every run` "
        "are written by hand and kept when the report is written again.",
        "## pgbench",
        pgbench_table(runs),
        "## Medians",
        f"Each column's median over the {len(runs)} runs.",
        table(median_rows(per_run)),
        "## Every run",
        "\n\n".join(f"Run {i}\n\n{table(r)}" for i, r in enumerate(per_run, 1)),
    ]
    return "\n\n".join(sections) + "\n"


def parse_options(argv: list[str] | None = None) -> FloorOptions:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    add = parser.add_argument
    add("--duration", type=int, default=10, help="measured seconds per phase (default 10)")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    add("--runs", type=int, default=3, help="repeat pgbench + every phase; report medians")
    add("--clients", type=int, default=16, help="load-generator clients of every phase")
    add("--users", type=int, default=1000, help="users of the many-users phases")
    add("--workers", type=int, default=2, help="uvicorn worker processes (default 2)")
    add("--pgbench-clients", type=int, default=8, help="TPC-B clients (default 8)")
    add("--pgbench-scale", type=int, default=10)
    add("--hot-row-clients", type=int, default=16, help="hot-row script clients (default 16)")
    add("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    add("--no-creditd", dest="creditd", action="store_false", help="leave creditd out")
    add("--no-keys", dest="keys", action="store_false", help="send no Idempotency-Key")
    add("--data-dir", type=Path, default=Path(".creditd/floor"), help="embedded server data")
    add("--out", type=Path, default=FLOOR_PATH, help="the Markdown report to write")
    args = parser.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    if not variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: a comma-separated list of {', '.join(VARIANTS)}")
    if min(args.duration, args.runs, args.clients, args.users, args.workers) < 1:
        parser.error("--duration, --runs, --clients, --users, --workers must be >= 1")
    bench = Options(
        duration=args.duration,
        warmup=args.warmup,
        runs=args.runs,
        clients=args.clients,
        latency_clients=args.clients,
        users=args.users,
        pgbench_clients=args.pgbench_clients,
        pgbench_scale=args.pgbench_scale,
        data_dir=args.data_dir,
        output=args.out,
        profile=False,
        service_workers=args.workers,
        keys=args.keys,
    )
    return FloorOptions(bench, variants, args.hot_row_clients, args.creditd)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the report and write it to --out (keeping sections added by hand)."""
    opts = parse_options(argv)
    opts.bench.data_dir.mkdir(parents=True, exist_ok=True)
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with open_postgres(opts.bench.data_dir) as pg:
        measured = measure(opts, pg)
        version, where = pg.version(), "embedded" if pg.embedded is not None else "DATABASE_URL"
    load = f"{load_before} before, {' '.join(f'{x:.1f}' for x in os.getloadavg())} after"
    report = markdown(opts, measured, version, where, load)
    print(report)
    out = opts.bench.output
    out.write_text(report + other_sections(out, report))
    log(f"wrote {out}")
    return 0 if measured.verified else 1


if __name__ == "__main__":
    raise SystemExit(main())
