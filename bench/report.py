"""The machine description and the console / Markdown report of a benchmark."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.config import Options
from bench.postgres import PgbenchResult
from bench.stats import PhaseResult, median_phase

RATIO_GOAL = 0.25
KEYS_RATIO_GOAL = 0.9
CHECK_P99_GOAL_MS = 10.0
START_P99_GOAL_MS = 15.0
CPU_KEYS = ("service", "postgres", "loadgen", "other")
PHASE_HEADER = ["phase", "clients", "users", "op", "req/s", "p50 ms", "p99 ms", "errors"]
PHASE_HEADER += ["CPU % " + " / ".join(CPU_KEYS)]


@dataclass(frozen=True)
class Run:
    """One repetition: pgbench, then every load phase."""

    pgbench: PgbenchResult
    pgbench_cpu: dict[str, float]
    phases: list[PhaseResult]

    def phase(self, name: str) -> PhaseResult:
        """The phase called `name`."""
        return next(p for p in self.phases if p.name == name)


@dataclass(frozen=True)
class Benchmark:
    """Everything one invocation measured."""

    options: Options
    runs: list[Run]
    postgres_version: str
    postgres_where: str
    verified: bool
    verify_line: str


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, Python and OS."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    ram_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": f"{ram_gib:.1f} GiB",
        "Python": platform.python_version(),
        "OS": f"{platform.system()} {platform.release()}",
    }


def _median_phases(bench: Benchmark) -> list[PhaseResult]:
    """Every phase's medians over the runs, in run order."""
    names = [p.name for p in bench.runs[0].phases]
    return [median_phase([run.phase(name) for run in bench.runs]) for name in names]


def _ratio(run: Run, name: str) -> float:
    """start+complete requests/s of phase `name` over pgbench tps of the same run."""
    return run.phase(name).rps / run.pgbench.tps if run.pgbench.tps else 0.0


def _keys_ratio(run: Run, pair: tuple[str, str]) -> float:
    """Keyed over unkeyed requests/s of the throughput phase, in one run."""
    keyed, plain = (run.phase(name).rps for name in pair)
    return keyed / plain if plain else 0.0


def _cpu_ms(phase: PhaseResult, key: str) -> float:
    """Milliseconds of CPU of `key` (service, postgres) per request of the phase."""
    return phase.cpu.get(key, 0.0) * 10 / phase.rps if phase.rps else 0.0


def _keys_rows(bench: Benchmark, pair: tuple[str, str]) -> list[list[str]]:
    """Per run: req/s with and without keys, their ratio, CPU ms per request of each."""
    rows = []
    for i, run in enumerate(bench.runs, 1):
        keyed, plain = (run.phase(name) for name in pair)
        row = [str(i), f"{keyed.rps:.0f}", f"{plain.rps:.0f}", f"{_keys_ratio(run, pair):.3f}"]
        row += [f"{_cpu_ms(p, k):.2f}" for k in ("service", "postgres") for p in (keyed, plain)]
        rows.append(row)
    return rows


def _goals(bench: Benchmark, phases: list[PhaseResult]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) rows."""
    opts = bench.options
    keys: list[tuple[str, str, bool]] = []
    if opts.keys_pair is not None:
        pair = opts.keys_pair
        kr = statistics.median(_keys_ratio(run, pair) for run in bench.runs)
        goal = f"req/s with keys / without (`{pair[0]}`) >= {KEYS_RATIO_GOAL}"
        keys = [(goal, f"{kr:.3f}", kr >= KEYS_RATIO_GOAL)]
    ratio = statistics.median(_ratio(run, f"pairs/many/{opts.clients}") for run in bench.runs)
    check_p99 = next(p for p in phases if p.name == f"check/many/{opts.latency_clients}")
    start_p99 = next(p for p in phases if p.name == f"pairs/many/{opts.latency_clients}")
    errors = sum(p.errors for p in phases)
    c4 = f"{opts.latency_clients} clients"
    return [
        (
            f"(start+complete req/s) / pgbench tps >= {RATIO_GOAL}",
            f"{ratio:.3f}",
            ratio >= RATIO_GOAL,
        ),
        (
            f"check p99 <= {CHECK_P99_GOAL_MS:g} ms at {c4}",
            f"{check_p99.ops['check'].p99_ms:.2f} ms",
            check_p99.ops["check"].p99_ms <= CHECK_P99_GOAL_MS,
        ),
        (
            f"start p99 <= {START_P99_GOAL_MS:g} ms at {c4}",
            f"{start_p99.ops['start'].p99_ms:.2f} ms",
            start_p99.ops["start"].p99_ms <= START_P99_GOAL_MS,
        ),
        *keys,
        ("no failed request", str(errors), errors == 0),
        ("`creditd verify`: ledger invariants hold", bench.verify_line, bench.verified),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _cpu_cell(cpu: dict[str, float]) -> str:
    """CPU % of service / postgres / loadgen / other."""
    return " / ".join(f"{cpu[k]:.0f}" if k in cpu else "-" for k in CPU_KEYS)


def _phase_rows(phases: list[PhaseResult]) -> list[list[str]]:
    """One row per phase and operation."""
    rows = []
    for phase in phases:
        for op, stats in phase.ops.items():
            flag = f"**{stats.errors}**" if stats.errors else "0"
            row = [phase.name, str(phase.clients), str(phase.users), op, f"{stats.rps:.0f}"]
            row += [f"{stats.p50_ms:.2f}", f"{stats.p99_ms:.2f}", flag, _cpu_cell(phase.cpu)]
            rows.append(row)
    return rows


def _run_rows(bench: Benchmark) -> list[list[str]]:
    """One row per run: pgbench, the throughput phase and the ratio."""
    opts = bench.options
    name = f"pairs/many/{opts.clients}"
    rows = []
    for i, run in enumerate(bench.runs, 1):
        check = run.phase(f"check/many/{opts.latency_clients}").ops["check"]
        start = run.phase(f"pairs/many/{opts.latency_clients}").ops["start"]
        row = [str(i), f"{run.pgbench.tps:.0f}", f"{run.phase(name).rps:.0f}"]
        row += [f"{_ratio(run, name):.3f}", f"{start.p99_ms:.2f}", f"{check.p99_ms:.2f}"]
        row += [_cpu_cell(run.pgbench_cpu), _cpu_cell(run.phase(name).cpu)]
        rows.append(row)
    return rows


def markdown(bench: Benchmark) -> str:
    """The whole report."""
    opts, phases = bench.options, _median_phases(bench)
    tps = statistics.median(run.pgbench.tps for run in bench.runs)
    pg_latency = statistics.median(run.pgbench.latency_ms for run in bench.runs)
    info = {**machine(), "PostgreSQL": f"{bench.postgres_version} ({bench.postgres_where})"}
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# creditd benchmark results", "", "Written by `make bench` (`python -m bench`)."]
    lines += ["", "## Machine", ""] + [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", "## Settings", ""]
    lines += [
        f"- {opts.runs} run(s); each: pgbench, then every phase for {opts.duration} s "
        f"(+{opts.warmup:g} s warm-up). Numbers below are medians over the runs.",
        f"- many users = {opts.users} seeded users picked at random; hot = one user.",
        f"- pgbench: TPC-B default script, scale {opts.pgbench_scale}, "
        f"{opts.pgbench_clients} clients, 2 threads, {opts.duration} s, database `bench_pgbench`.",
        f"- service: `creditd serve --workers {opts.service_workers} --no-workers` (HTTP worker "
        "processes; background jobs off), production settings, rate limit off; "
        "load generator: one asyncio process with a minimal HTTP/1.1 keep-alive client.",
        "- Idempotency-Key: "
        + (
            f"a fresh uuid4 on every POST; `pairs/many/{opts.clients} no-keys` is the same "
            "throughput phase without keys, in the same run."
            if opts.keys
            else "none (`--no-keys`)."
        ),
        "- CPU % is per one core (100 = one core busy for the whole phase); `other` is every "
        "other process on the machine: other tenants, and the pgbench client during pgbench.",
    ]
    if opts.profile:
        lines.append("- **profiled**: the service ran under pyinstrument; not comparable.")
    lines += ["", "## Goals", ""]
    goal_rows = [[g, m, "met" if ok else "**NOT met**"] for g, m, ok in _goals(bench, phases)]
    lines += _table(["goal", "measured", ""], goal_rows)
    lines += ["", "## Phases (medians)", "", *_table(PHASE_HEADER, _phase_rows(phases))]
    lines += ["", f"pgbench TPC-B: **{tps:.0f} tps**, latency average {pg_latency:.2f} ms."]
    lines += ["", "## Runs", ""]
    run_header = ["run", "pgbench tps", f"pairs/many/{opts.clients} req/s", "ratio"]
    run_header += ["start p99 ms", "check p99 ms", "CPU % during pgbench", "during pairs"]
    lines += _table(run_header, _run_rows(bench))
    if opts.keys_pair is not None:
        lines += ["", "## Idempotency-Key cost (same run)", ""]
        keys_header = ["run", "req/s keyed", "req/s no keys", "ratio"]
        keys_header += ["service CPU ms/req keyed", "no keys", "postgres CPU ms/req keyed"]
        keys_header += ["no keys"]
        lines += _table(keys_header, _keys_rows(bench, opts.keys_pair))
    return "\n".join(lines) + "\n"


def console(bench: Benchmark) -> str:
    """The short summary printed at the end of a run."""
    phases = _median_phases(bench)
    tps = statistics.median(run.pgbench.tps for run in bench.runs)
    lines = [f"\n{'phase':<18} {'op':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for phase in phases:
        for op, s in phase.ops.items():
            lines.append(
                f"{phase.name:<18} {op:<9} {s.rps:>8.0f} {s.p50_ms:>8.2f} "
                f"{s.p99_ms:>8.2f} {s.errors:>7}{'  <- FAILED REQUESTS' if s.errors else ''}"
            )
    pairs = next(p for p in phases if p.name == f"pairs/many/{bench.options.clients}")
    lines.append(
        f"pgbench TPC-B: {tps:.0f} tps; {pairs.name} start+complete: {pairs.rps:.0f} req/s"
    )
    for goal, measured, ok in _goals(bench, phases):
        lines.append(f"{'OK  ' if ok else 'MISS'} {goal}: {measured}")
    return "\n".join(lines)
