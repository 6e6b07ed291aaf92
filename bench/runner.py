"""The benchmark driver: PostgreSQL, pgbench, the service, the load phases, verify, report."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from bench import scale
from bench.config import Options, parse_options
from bench.cpu import CpuSample
from bench.loadgen import LoadSpec, PhaseSpec, large_user_id
from bench.peer import PeerUnavailable, ensure_env, run_peer
from bench.postgres import HOT_ROW_SCRIPT, PgbenchResult, Postgres, open_postgres
from bench.report import (
    BEFORE_AFTER_HEADING,
    Benchmark,
    Large,
    Run,
    console,
    markdown,
    plans_markdown,
    summarise,
)
from bench.service import Service, run_service, setup, verify
from bench.stats import PhaseResult
from bench.summary import SummaryError, load, save

CREDITD_DB = "creditd_bench"
PGBENCH_DB = "bench_pgbench"
PLANS_NAME = "PLANS.md"


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def run_load(
    opts: Options,
    service: Service,
    key: str,
    pg: Postgres,
    phases: list[PhaseSpec] | None = None,
) -> list[PhaseResult]:
    """Run every phase in a separate load-generator process and collect its results."""
    spec = LoadSpec(
        port=service.port,
        token=key,
        users=opts.users,
        duration=opts.duration,
        warmup=opts.warmup,
        phases=opts.phases() if phases is None else phases,
        service_pid=service.process.pid,
        postmaster_pid=pg.postmaster_pid(),
    )
    budget = len(spec.phases) * (opts.duration + opts.warmup + 30)
    result = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=spec.to_json(),
        stdout=subprocess.PIPE,
        check=True,
        timeout=budget,
    )
    return [PhaseResult.from_json(p) for p in orjson.loads(result.stdout)]


PRIME_SECONDS = 3


def prime(opts: Options, service: Service, key: str, pg: Postgres) -> None:
    """Bring the fresh database to a steady state before measuring, as `pgbench -i` does
    (it vacuums its tables): a few seconds of every kind of request, then VACUUM ANALYZE.
    Until its first (auto)analyze, an empty table has no statistics, and the plans cached
    meanwhile may pick any index that matches (say, the transactions' per-user index for a
    lookup by id) until autovacuum gets to it a minute later."""
    log(f"priming: {PRIME_SECONDS} s of pairs, check and usage, then VACUUM ANALYZE")
    spec = [
        PhaseSpec(f"prime/{kind}", kind, opts.latency_clients, hot=False, keys=opts.keys)
        for kind in ("pairs", "check", "usage")
    ]
    run_load(replace(opts, duration=PRIME_SECONDS, warmup=0), service, key, pg, spec)
    pg.psql("VACUUM ANALYZE", CREDITD_DB)


def run_pgbench(
    pg: Postgres, service: Service, clients: int, seconds: int, script: Path | None = None
) -> tuple[PgbenchResult, dict[str, float]]:
    """pgbench on its database (`script`, default TPC-B) and the CPU use meanwhile."""
    before = CpuSample.take(service.process.pid, pg.postmaster_pid())
    result = pg.pgbench_run(PGBENCH_DB, clients, seconds, script)
    return result, CpuSample.take(service.process.pid, pg.postmaster_pid()).percent_since(before)


def measure(opts: Options, pg: Postgres, peer_python: Path | None = None) -> Benchmark:
    """Prepare both databases, then run pgbench (TPC-B, then the hot row) and the phases
    `opts.runs` times, then verify."""
    log(f"databases: {CREDITD_DB}, {PGBENCH_DB} (pgbench -i -s {opts.pgbench_scale})")
    pg.recreate_database(CREDITD_DB)
    pg.recreate_database(PGBENCH_DB)
    pg.pgbench_init(PGBENCH_DB, opts.pgbench_scale)
    profile = opts.data_dir.resolve() / "profile.txt" if opts.profile else None
    runs = []
    service_log = opts.data_dir / "service.log"
    with run_service(pg.url(CREDITD_DB), service_log, profile, opts.service_workers) as service:
        log(f"service on 127.0.0.1:{service.port}; seeding {opts.users} users")
        key = setup(service, opts.users)
        prime(opts, service, key, pg)
        for i in range(1, opts.runs + 1):
            log(f"run {i}/{opts.runs}: pgbench ({opts.duration} s)")
            pgbench, cpu = run_pgbench(pg, service, opts.pgbench_clients, opts.duration)
            log(f"  pgbench: {pgbench.tps:.0f} tps")
            # The hot-row baseline of pairs/hot: as many clients, all on one account row.
            hot_row, hot_row_cpu = run_pgbench(
                pg, service, opts.clients, opts.duration, HOT_ROW_SCRIPT
            )
            log(f"  pgbench hot row ({opts.clients} clients): {hot_row.tps:.0f} tps")
            phases = run_load(opts, service, key, pg)
            peer = None
            if peer_python is not None:
                log(f"  peer {opts.peer}: deduct, {opts.clients} clients, {opts.users} users")
                peer = run_peer(
                    peer_python,
                    pg,
                    users=opts.users,
                    clients=opts.clients,
                    duration=opts.duration,
                    warmup=opts.warmup,
                )
                log(f"  {peer.name}: {peer.rps:.0f} charges/s, {peer.errors} errors")
            runs.append(Run(pgbench, cpu, hot_row, hot_row_cpu, phases, peer))
        large = measure_large(opts, service, key, pg) if opts.seed_users else None
    if profile is not None:
        log(f"service profile: {profile}")
    verified, verify_line = verify(pg.url(CREDITD_DB))
    where = "embedded" if pg.embedded is not None else "DATABASE_URL"
    bench = Benchmark(opts, runs, pg.version(), where, verified, verify_line, large)
    return bench


def measure_large(opts: Options, service: Service, key: str, pg: Postgres) -> Large:
    """Plans at the benchmark's size, the large seed, plans at the large size, and the
    large-population phases `opts.runs` times (after every normal run)."""
    url = pg.url(CREDITD_DB)
    project = asyncio.run(scale.project_id(url))
    small_user = "u00001"
    small = asyncio.run(scale.explain_hot(url, project, small_user))
    log(f"seeding {opts.seed_users:,} users, ~{opts.seed_ledger:,} ledger entries with SQL")
    seeded = asyncio.run(
        scale.seed_large(url, project, opts.seed_users, max(opts.seed_ledger, opts.seed_users))
    )
    log(f"  seeded in {seeded.seed_s:.0f} s (+ VACUUM ANALYZE {seeded.vacuum_s:.0f} s)")
    big_user = large_user_id(opts.seed_users // 2)
    big = asyncio.run(scale.explain_hot(url, project, big_user))
    runs = []
    for i in range(1, opts.runs + 1):
        log(f"large run {i}/{opts.runs}")
        runs.append(run_load(opts, service, key, pg, opts.large_phases()))
    plans = {f"{opts.users:,} users (user {small_user})": small}
    plans[f"{seeded.users:,} more users (user {big_user})"] = big
    return Large(seeded, runs, plans)


def other_sections(path: Path, report: str) -> str:
    """The sections of the existing report that other benchmarks wrote (`make bench-prune`,
    `make bench-webhooks`): every `## ` section whose heading this report does not have (an
    earlier run's before/after section is this benchmark's own, kept only by `--before`)."""
    if not path.exists():
        return ""
    own = {line for line in report.splitlines() if line.startswith("## ")}
    own.add(BEFORE_AFTER_HEADING)
    kept: list[str] = []
    keeping = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keeping = line not in own
        if keeping:
            kept.append(line)
    return "\n" + "\n".join(kept) + "\n" if kept else ""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the Markdown report (with a before/after
    section given --before) and, given --save, this run's JSON summary."""
    opts = parse_options(argv)
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    before = None
    if opts.before is not None:
        try:
            before = load(opts.before)
        except (OSError, SummaryError) as exc:
            log(f"--before {opts.before}: {exc}")
            return 2
        log(f"before: {before.label} ({before.date}), from {opts.before}")
    peer_python = None
    if opts.peer:
        log(f"peer {opts.peer}: environment {opts.peer_env}")
        try:
            peer_python = ensure_env(opts.peer, opts.peer_source, opts.peer_env)
        except PeerUnavailable as exc:
            log(str(exc))
            return 2
    with open_postgres(opts.data_dir) as pg:
        bench = measure(opts, pg, peer_python)
    print(console(bench))
    if bench.large is not None:
        plans_path = opts.output.with_name(PLANS_NAME)
        plans_path.write_text(plans_markdown(bench))
        log(f"wrote {plans_path}")
    summary = summarise(bench)
    report = markdown(bench, before, summary)
    opts.output.write_text(report + other_sections(opts.output, report))
    log(f"wrote {opts.output}")
    if opts.save is not None:
        save(summary, opts.save)
        log(f"wrote {opts.save}")
    return 0 if bench.verified else 1
