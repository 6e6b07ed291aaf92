"""The benchmark driver: PostgreSQL, pgbench, the service, the load phases, verify, report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from bench.config import Options, parse_options
from bench.cpu import CpuSample
from bench.loadgen import LoadSpec
from bench.postgres import Postgres, open_postgres
from bench.report import Benchmark, Run, console, markdown
from bench.service import Service, run_service, setup, verify
from bench.stats import PhaseResult

CREDITD_DB = "creditd_bench"
PGBENCH_DB = "bench_pgbench"


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def run_load(opts: Options, service: Service, key: str, pg: Postgres) -> list[PhaseResult]:
    """Run every phase in a separate load-generator process and collect its results."""
    spec = LoadSpec(
        port=service.port,
        token=key,
        users=opts.users,
        duration=opts.duration,
        warmup=opts.warmup,
        phases=opts.phases(),
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


def measure(opts: Options, pg: Postgres) -> Benchmark:
    """Prepare both databases, then run pgbench and the phases `opts.runs` times, then verify."""
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
        for i in range(1, opts.runs + 1):
            log(f"run {i}/{opts.runs}: pgbench ({opts.duration} s)")
            before = CpuSample.take(service.process.pid, pg.postmaster_pid())
            pgbench = pg.pgbench_run(PGBENCH_DB, opts.pgbench_clients, opts.duration)
            cpu = CpuSample.take(service.process.pid, pg.postmaster_pid()).percent_since(before)
            log(f"  pgbench: {pgbench.tps:.0f} tps")
            runs.append(Run(pgbench, cpu, run_load(opts, service, key, pg)))
    if profile is not None:
        log(f"service profile: {profile}")
    verified, verify_line = verify(pg.url(CREDITD_DB))
    where = "embedded" if pg.embedded is not None else "DATABASE_URL"
    return Benchmark(opts, runs, pg.version(), where, verified, verify_line)


def other_sections(path: Path, report: str) -> str:
    """The sections of the existing report that other benchmarks wrote (`make bench-prune`,
    `make bench-webhooks`): every `## ` section whose heading this report does not have."""
    if not path.exists():
        return ""
    own = {line for line in report.splitlines() if line.startswith("## ")}
    kept: list[str] = []
    keeping = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keeping = line not in own
        if keeping:
            kept.append(line)
    return "\n" + "\n".join(kept) + "\n" if kept else ""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the summary, write the Markdown report."""
    opts = parse_options(argv)
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    with open_postgres(opts.data_dir) as pg:
        bench = measure(opts, pg)
    print(console(bench))
    report = markdown(bench)
    opts.output.write_text(report + other_sections(opts.output, report))
    log(f"wrote {opts.output}")
    return 0 if bench.verified else 1
