"""The machine description and the console / Markdown report of a benchmark."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.config import Options
from bench.postgres import PgbenchResult
from bench.scale import Seeded
from bench.stats import PhaseResult, median_phase
from bench.summary import GOAL_FIGURES, OpFigures, Summary, default_label

# Issue 12's goals.
RATIO_GOAL = 0.5
HOT_RATIO_GOAL = 0.5  # pairs/hot start+complete req/s / pgbench hot-row tps, same run
USAGE_RATIO_GOAL = 1.5
KEYS_RATIO_GOAL = 0.9  # keyed / unkeyed start+complete throughput, same run
LARGE_RATIO_GOAL = 1.2
CHECK_P99_GOAL_MS = 5.0
CHECK_CPU_GOAL_MS = 0.5  # the service's (Python) CPU per check request
START_P99_GOAL_MS = 10.0
CPU_KEYS = ("service", "postgres", "loadgen", "other")
PHASE_HEADER = ["phase", "clients", "users", "op", "req/s", "p50 ms", "p99 ms", "errors"]
PHASE_HEADER += ["CPU % " + " / ".join(CPU_KEYS)]
BEFORE_AFTER_HEADING = "## Before / after"
DATE_FORMAT = "%Y-%m-%d %H:%M UTC"


@dataclass(frozen=True)
class Run:
    """One repetition: pgbench TPC-B, pgbench on one hot row, then every load phase."""

    pgbench: PgbenchResult
    pgbench_cpu: dict[str, float]
    hot_row: PgbenchResult
    hot_row_cpu: dict[str, float]
    phases: list[PhaseResult]
    peer: PhaseResult | None = None

    def phase(self, name: str) -> PhaseResult:
        """The phase called `name`."""
        return next(p for p in self.phases if p.name == name)


@dataclass(frozen=True)
class Large:
    """`--seed-users`: the seed, the large-population phases of each run, the plans by size."""

    seeded: Seeded
    runs: list[list[PhaseResult]]
    plans: dict[str, dict[str, str]] = field(default_factory=dict)

    def medians(self) -> list[PhaseResult]:
        """Every large phase's medians over the runs."""
        return [median_phase([run[i] for run in self.runs]) for i in range(len(self.runs[0]))]


@dataclass(frozen=True)
class Benchmark:
    """Everything one invocation measured."""

    options: Options
    runs: list[Run]
    postgres_version: str
    postgres_where: str
    verified: bool
    verify_line: str
    large: Large | None = None


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


def _ratio(phase: PhaseResult, pgbench: PgbenchResult) -> float:
    """start+complete requests/s of a phase over the tps of a pgbench of the same run."""
    return phase.rps / pgbench.tps if pgbench.tps else 0.0


def _hot_ratio(run: Run, opts: Options) -> float:
    """One user's start+complete req/s (pairs/hot) over the hot-row pgbench tps, same run."""
    return _ratio(run.phase(f"pairs/hot/{opts.clients}"), run.hot_row)


def charges(phase: PhaseResult) -> float:
    """Charges/s of a phase: start+complete pairs (completes/s), or one-shot usage requests."""
    op = "complete" if "complete" in phase.ops else "usage" if "usage" in phase.ops else ""
    if not op:
        op = "deduct" if "deduct" in phase.ops else ""
    return phase.ops[op].rps if op else 0.0


def _usage_ratio(run: Run, opts: Options) -> float:
    """One-shot usage charges/s over start+complete charges/s at the same clients, same run."""
    pairs = charges(run.phase(f"pairs/many/{opts.clients}"))
    return charges(run.phase(f"usage/many/{opts.clients}")) / pairs if pairs else 0.0


def _peer_ratio(run: Run, name: str) -> float:
    """creditd charges/s of phase `name` over the peer's deduct charges/s, same run."""
    if run.peer is None or not charges(run.peer):
        return 0.0
    return charges(run.phase(name)) / charges(run.peer)


def cpu_ms(phase: PhaseResult, key: str, per_charge: bool = False) -> float | None:
    """CPU-ms of `key` (service, postgres) per request (or per charge) in a phase: its CPU %
    (100 = one core) over the phase's requests (charges) per second."""
    rate = charges(phase) if per_charge else phase.rps
    if key not in phase.cpu or not rate:
        return None
    return phase.cpu[key] * 10 / rate


def _pairs_ratio(bench: Benchmark) -> float:
    """(start+complete req/s) / pgbench tps at `--clients`: the median of per-run ratios."""
    name = f"pairs/many/{bench.options.clients}"
    return statistics.median(_ratio(run.phase(name), run.pgbench) for run in bench.runs)


def _median_hot_ratio(bench: Benchmark) -> float:
    """pairs/hot req/s / pgbench hot-row tps: the median of per-run ratios."""
    return statistics.median(_hot_ratio(run, bench.options) for run in bench.runs)


def _median_usage_ratio(bench: Benchmark) -> float:
    """One-shot usage / start+complete charges/s: the median of per-run ratios."""
    return statistics.median(_usage_ratio(run, bench.options) for run in bench.runs)


def _keyed_ratio(bench: Benchmark) -> float | None:
    """start+complete req/s with keys / without (same run, median), or None with --no-keys."""
    if not bench.options.keys:
        return None
    name = f"pairs/many/{bench.options.clients}"
    return statistics.median(
        run.phase(name).rps / run.phase(f"{name} no-keys").rps
        for run in bench.runs
        if run.phase(f"{name} no-keys").rps
    )


def _check_cpu_goal(phases: list[PhaseResult], opts: Options) -> list[tuple[str, str, bool]]:
    """The service's CPU per check request, the worse of the two check phases (none when the
    CPU was not measured)."""
    measured = [cpu_ms(p, "service") for p in phases if p.name.startswith("check/many/")]
    known = [ms for ms in measured if ms is not None]
    if not known:
        return []
    worst = max(known)
    clients = f"{opts.latency_clients} and {opts.clients} clients"
    return [
        (
            f"check: service (Python) CPU per request <= {CHECK_CPU_GOAL_MS:g} ms "
            f"(the worse of {clients})",
            f"{worst:.2f} ms",
            worst <= CHECK_CPU_GOAL_MS,
        )
    ]


def _goals(bench: Benchmark, phases: list[PhaseResult]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) rows."""
    opts = bench.options
    ratio = _pairs_ratio(bench)
    check_p99 = next(p for p in phases if p.name == f"check/many/{opts.latency_clients}")
    start_p99 = next(p for p in phases if p.name == f"pairs/many/{opts.latency_clients}")
    errors = sum(p.errors for p in phases)
    c4 = f"{opts.latency_clients} clients"
    usage_ratio = _median_usage_ratio(bench)
    hot = _median_hot_ratio(bench)
    rows = [
        (
            f"(start+complete req/s) / pgbench tps >= {RATIO_GOAL}",
            f"{ratio:.3f} (charges per TPC-B transaction: {ratio / 2:.3f})",
            ratio >= RATIO_GOAL,
        ),
        (
            "hot single user: (pairs/hot start+complete req/s) / pgbench hot-row tps >= "
            f"{HOT_RATIO_GOAL} ({opts.clients} clients)",
            f"{hot:.3f} (charges per hot-row transaction: {hot / 2:.3f})",
            hot >= HOT_RATIO_GOAL,
        ),
        (
            f"one-shot `POST /v1/usage` charges/s >= {USAGE_RATIO_GOAL} x start+complete "
            f"charges/s ({opts.clients} clients)",
            f"{usage_ratio:.2f}x",
            usage_ratio >= USAGE_RATIO_GOAL,
        ),
        (
            f"check p99 <= {CHECK_P99_GOAL_MS:g} ms at {c4}",
            f"{check_p99.ops['check'].p99_ms:.2f} ms",
            check_p99.ops["check"].p99_ms <= CHECK_P99_GOAL_MS,
        ),
        *_check_cpu_goal(phases, opts),
        (
            f"start p99 <= {START_P99_GOAL_MS:g} ms at {c4}",
            f"{start_p99.ops['start'].p99_ms:.2f} ms",
            start_p99.ops["start"].p99_ms <= START_P99_GOAL_MS,
        ),
    ]
    keyed = _keyed_ratio(bench)
    if keyed is not None:
        rows.append(
            (
                f"start+complete with an Idempotency-Key on every POST >= {KEYS_RATIO_GOAL} x "
                f"without keys (same run, {opts.clients} clients)",
                f"{keyed:.2f}x",
                keyed >= KEYS_RATIO_GOAL,
            )
        )
    if bench.large is not None:
        for phase in bench.large.medians():
            for stat in ("p50_ms", "p99_ms"):
                small = getattr(start_p99.ops["start"], stat)
                big = getattr(phase.ops["start"], stat)
                x = big / small if small else 0.0
                rows.append(
                    (
                        f"{phase.name} start {stat[:3]} <= {LARGE_RATIO_GOAL}x the "
                        f"{opts.users}-user figure",
                        f"{big:.2f} ms vs {small:.2f} ms: {x:.2f}x",
                        x <= LARGE_RATIO_GOAL,
                    )
                )
        errors += sum(p.errors for p in bench.large.medians())
    rows += [
        ("no failed request", str(errors), errors == 0),
        ("`creditd verify`: ledger invariants hold", bench.verify_line, bench.verified),
    ]
    return rows


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
    """One row per run: each pgbench (TPC-B, hot row), the phase it is the baseline of
    (pairs/many, pairs/hot) and their ratio; usage; latency; CPU."""
    opts = bench.options
    name, hot = f"pairs/many/{opts.clients}", f"pairs/hot/{opts.clients}"
    rows = []
    for i, run in enumerate(bench.runs, 1):
        check = run.phase(f"check/many/{opts.latency_clients}").ops["check"]
        start = run.phase(f"pairs/many/{opts.latency_clients}").ops["start"]
        usage = run.phase(f"usage/many/{opts.clients}")
        ratio = _ratio(run.phase(name), run.pgbench)
        row = [str(i), f"{run.pgbench.tps:.0f}", f"{run.phase(name).rps:.0f}"]
        row += [f"{ratio:.3f}", f"{charges(run.phase(name)):.0f}", f"{ratio / 2:.3f}"]
        row += [
            f"{run.hot_row.tps:.0f}",
            f"{run.phase(hot).rps:.0f}",
            f"{_hot_ratio(run, opts):.3f}",
        ]
        row += [f"{charges(usage):.0f}", f"{_usage_ratio(run, opts):.2f}"]
        if bench.runs[0].peer is not None:
            peer = f"{charges(run.peer):.0f}" if run.peer else "-"
            row += [peer, f"{_peer_ratio(run, usage.name):.2f}", f"{_peer_ratio(run, name):.2f}"]
        row += [f"{start.p99_ms:.2f}", f"{check.p99_ms:.2f}"]
        row += [_cpu_cell(run.pgbench_cpu), _cpu_cell(run.hot_row_cpu)]
        row += [_cpu_cell(run.phase(name).cpu)]
        rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu_rows(phases: list[PhaseResult]) -> list[list[str]]:
    """Per phase: req/s, charges/s and CPU-ms per request and per charge."""
    rows = []
    for p in phases:
        rate = charges(p)
        row = [p.name, f"{p.rps:.0f}", f"{rate:.0f}" if rate else "-"]
        row += [_ms(cpu_ms(p, "service")), _ms(cpu_ms(p, "postgres"))]
        row += [_ms(cpu_ms(p, "service", True)), _ms(cpu_ms(p, "postgres", True))]
        rows.append(row)
    return rows


CPU_HEADER = ["phase", "req/s", "charges/s", "service CPU-ms/req", "PostgreSQL CPU-ms/req"]
CPU_HEADER += ["service CPU-ms/charge", "PostgreSQL CPU-ms/charge"]


def _peer_lines(bench: Benchmark) -> list[str]:
    """The peer comparison section."""
    opts = bench.options
    peers = [run.peer for run in bench.runs if run.peer is not None]
    if not peers:
        return []
    peer = median_phase(peers)
    usage_name, pairs_name = f"usage/many/{opts.clients}", f"pairs/many/{opts.clients}"
    usage = statistics.median(_peer_ratio(run, usage_name) for run in bench.runs)
    pairs = statistics.median(_peer_ratio(run, pairs_name) for run in bench.runs)
    stats = peer.ops["deduct"]
    lines = ["", f"## Peer: {opts.peer}", ""]
    lines += [
        f"- `CreditManager.deduct` (ducto's one-shot charge: price, then one "
        "`deduct_with_allowance` call on a new psycopg2 connection) from "
        f"{peer.clients} threads over {peer.users} users, on the same PostgreSQL (database "
        f"`bench_ducto`), {opts.duration} s (+{opts.warmup:g} s warm-up) after each run's "
        f"creditd phases; installed by the bench from `{opts.peer_source or opts.peer}` "
        f"into `{opts.peer_env}` (bench/peer.py).",
        "- `service` CPU is the ducto process (library, driver threads, psycopg2); creditd's "
        "`service` excludes its load generator.",
        "",
    ]
    header = ["", "charges/s", "p50 ms", "p99 ms", "errors", "CPU % " + " / ".join(CPU_KEYS)]
    header += ["service CPU-ms/charge", "PostgreSQL CPU-ms/charge"]
    row = ["ducto deduct", f"{stats.rps:.0f}", f"{stats.p50_ms:.2f}", f"{stats.p99_ms:.2f}"]
    row += [str(stats.errors), _cpu_cell(peer.cpu)]
    row += [_ms(cpu_ms(peer, "service", True)), _ms(cpu_ms(peer, "postgres", True))]
    lines += _table(header, [row])
    lines += [
        "",
        f"creditd / ducto charges/s (medians of per-run ratios): one-shot `usage` "
        f"**{usage:.2f}x**, start+complete **{pairs:.2f}x**.",
    ]
    return lines


def _large_lines(bench: Benchmark) -> list[str]:
    """The large-dataset section."""
    large = bench.large
    if large is None:
        return []
    opts, seeded = bench.options, large.seeded
    small = median_phase([run.phase(f"pairs/many/{opts.latency_clients}") for run in bench.runs])
    lines = ["", f"## At {seeded.users:,} more users", ""]
    lines += [
        f"- seeded with SQL (bench/scale.py, `--seed-users {opts.seed_users} --seed-ledger "
        f"{opts.seed_ledger}`): {seeded.users:,} users, now {seeded.ledger_entries:,} ledger "
        f"entries and {seeded.transactions:,} transactions in the database, in "
        f"{seeded.seed_s:.0f} s, then VACUUM ANALYZE {seeded.vacuum_s:.0f} s; sizes: "
        + ", ".join(f"{t} {s}" for t, s in seeded.sizes.items())
        + ".",
        f"- the {opts.users}-user figures are the `pairs/many/{opts.latency_clients}` phase "
        "above (before the seed); the large phases ran after it, "
        f"{len(large.runs)} time(s); hot = the first {opts.hot_users} seeded users, random = "
        "any seeded user. Plans: [PLANS.md](PLANS.md).",
        "",
    ]
    header = ["phase", "start req/s", "start p50 ms", "start p99 ms", "p50 x", "p99 x"]
    header += ["CPU % " + " / ".join(CPU_KEYS), "PostgreSQL CPU-ms/charge"]
    rows = []
    base = small.ops["start"]
    for p in [small, *large.medians()]:
        s = p.ops["start"]
        row = [p.name, f"{s.rps:.0f}", f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}"]
        row += [f"{s.p50_ms / base.p50_ms:.2f}" if base.p50_ms else "-"]
        row += [f"{s.p99_ms / base.p99_ms:.2f}" if base.p99_ms else "-"]
        row += [_cpu_cell(p.cpu), _ms(cpu_ms(p, "postgres", True))]
        rows.append(row)
    return lines + _table(header, rows)


def summarise(bench: Benchmark) -> Summary:
    """What `--save` writes: the median phases, pgbench tps (TPC-B, hot row) and the goal
    figures."""
    phases = [
        OpFigures(
            name=phase.name,
            op=op,
            clients=phase.clients,
            rps=stats.rps,
            p50_ms=stats.p50_ms,
            p99_ms=stats.p99_ms,
            service_cpu_ms_per_req=cpu_ms(phase, "service"),
            postgres_cpu_ms_per_req=cpu_ms(phase, "postgres"),
        )
        for phase in _median_phases(bench)
        for op, stats in phase.ops.items()
    ]
    ratio = _pairs_ratio(bench)
    goals = {"pairs_req_per_pgbench_tps": ratio, "charges_per_tpcb_txn": ratio / 2}
    hot = _median_hot_ratio(bench)
    goals |= {"hot_pairs_req_per_hot_row_tps": hot, "charges_per_hot_row_txn": hot / 2}
    goals["usage_per_pairs_charges"] = _median_usage_ratio(bench)
    keyed = _keyed_ratio(bench)
    if keyed is not None:
        goals["keyed_per_unkeyed"] = keyed
    return Summary(
        label=bench.options.label or default_label(),
        date=datetime.now(UTC).strftime(DATE_FORMAT),
        machine=machine(),
        pgbench_tps=statistics.median(run.pgbench.tps for run in bench.runs),
        phases=phases,
        goals=goals,
        pgbench_hot_row_tps=statistics.median(run.hot_row.tps for run in bench.runs),
        postgres=f"{bench.postgres_version} ({bench.postgres_where})",
    )


def _x(after: float | None, before: float | None) -> str:
    """after / before as `1.23x`, or `-` when either is missing or before is zero."""
    return "-" if after is None or not before else f"{after / before:.2f}x"


def _pair(before: float | None, after: float | None) -> str:
    """`before / after`, `-` for a missing side."""
    return " / ".join("-" if v is None else f"{v:.2f}" for v in (before, after))


def _machine_lines(before: Summary, after: Summary) -> list[str]:
    """Whether both runs were measured on the same machine; both machines when not."""
    lines = []
    if before.machine == after.machine:
        same = ", ".join(f"{k} {v}" for k, v in after.machine.items())
        lines.append(f"- both measured on the same machine ({same}).")
    else:
        lines.append("- **measured on different machines** (below): not directly comparable.")
    if before.postgres != after.postgres:
        lines.append(f"- PostgreSQL: before {before.postgres or '-'}, after {after.postgres}.")
    if before.machine != after.machine:
        keys = list(dict.fromkeys([*before.machine, *after.machine]))
        rows = [[k, before.machine.get(k, "-"), after.machine.get(k, "-")] for k in keys]
        lines += ["", *_table(["machine", "before", "after"], rows)]
    return lines


BEFORE_AFTER_HEADER = ["phase", "op", "before req/s", "after req/s", "after / before"]
BEFORE_AFTER_HEADER += ["p50 ms before / after", "p99 ms before / after"]
BEFORE_AFTER_HEADER += ["service CPU-ms/req before / after"]
BEFORE_AFTER_HEADER += ["PostgreSQL CPU-ms/req before / after"]


def _before_after_rows(before: Summary, after: Summary) -> list[list[str]]:
    """One row per phase and operation present in both, in the after run's order."""
    old = {p.key: p for p in before.phases}
    rows = []
    for new in after.phases:
        if (b := old.get(new.key)) is None:
            continue
        row = [new.name, new.op, f"{b.rps:.0f}", f"{new.rps:.0f}", _x(new.rps, b.rps)]
        row += [_pair(b.p50_ms, new.p50_ms), _pair(b.p99_ms, new.p99_ms)]
        row += [_pair(b.service_cpu_ms_per_req, new.service_cpu_ms_per_req)]
        row += [_pair(b.postgres_cpu_ms_per_req, new.postgres_cpu_ms_per_req)]
        rows.append(row)
    return rows


def _unmatched_lines(before: Summary, after: Summary) -> list[str]:
    """The phases (and operations) measured in only one of the runs."""
    lines = []
    for side, these, others in (("before", before, after), ("after", after, before)):
        theirs = {p.key for p in others.phases}
        only = [f"`{p.name}` {p.op}" for p in these.phases if p.key not in theirs]
        if only:
            lines.append(f"- only {side}: " + ", ".join(only) + ".")
    return lines


def _figure_rows(before: Summary, after: Summary) -> list[list[str]]:
    """pgbench tps (TPC-B, hot row) and the goal figures: before, after, after / before."""
    rows = []
    for label, tps in (
        ("pgbench TPC-B tps", (before.pgbench_tps, after.pgbench_tps)),
        ("pgbench hot-row tps", (before.pgbench_hot_row_tps, after.pgbench_hot_row_tps)),
    ):
        cells = ["-" if v is None else f"{v:.0f}" for v in tps]
        rows.append([label, *cells, _x(tps[1], tps[0])])
    for key in dict.fromkeys([*GOAL_FIGURES, *before.goals, *after.goals]):
        b, a = before.goals.get(key), after.goals.get(key)
        if b is None and a is None:
            continue
        cells = ["-" if v is None else f"{v:.3f}" for v in (b, a)]
        rows.append([GOAL_FIGURES.get(key, key), *cells, _x(a, b)])
    return rows


def before_after_lines(before: Summary, after: Summary) -> list[str]:
    """The `--before` section: this run against a summary an earlier run saved."""
    lines = ["", BEFORE_AFTER_HEADING, ""]
    lines += [
        f"- before: **{before.label}** ({before.date or 'undated'}), read from `--before`; "
        f"after: **{after.label}** ({after.date}), this run. Medians over each one's runs.",
        *_machine_lines(before, after),
    ]
    lines += ["", *_table(BEFORE_AFTER_HEADER, _before_after_rows(before, after))]
    unmatched = _unmatched_lines(before, after)
    lines += ["", *unmatched] if unmatched else []
    lines += [
        "",
        *_table(["figure", "before", "after", "after / before"], _figure_rows(before, after)),
    ]
    return lines


def plans_markdown(bench: Benchmark) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the hot statements at both sizes."""
    assert bench.large is not None
    lines = ["# Plans of the hot statements", ""]
    lines += [
        "Written by `make bench BENCH_ARGS='--seed-users N --seed-ledger M'` (bench/scale.py): "
        "`EXPLAIN (ANALYZE, BUFFERS)` of each statement once, in a transaction rolled back, "
        "with the parameters of one user (custom plans; the service's prepared statements "
        "may switch to a generic plan after five executions).",
    ]
    for size, plans in bench.large.plans.items():
        lines += ["", f"## {size}"]
        for title, plan in plans.items():
            lines += ["", f"### {title}", "", "```", plan, "```"]
    return "\n".join(lines) + "\n"


def markdown(bench: Benchmark, before: Summary | None = None, after: Summary | None = None) -> str:
    """The whole report; with `before` (`--before`), a before/after section after the goals,
    against `after` (this run's summary, default `summarise(bench)`)."""
    opts, phases = bench.options, _median_phases(bench)
    tps = statistics.median(run.pgbench.tps for run in bench.runs)
    pg_latency = statistics.median(run.pgbench.latency_ms for run in bench.runs)
    hot_tps = statistics.median(run.hot_row.tps for run in bench.runs)
    hot_latency = statistics.median(run.hot_row.latency_ms for run in bench.runs)
    info = {**machine(), "PostgreSQL": f"{bench.postgres_version} ({bench.postgres_where})"}
    info["date"] = datetime.now(UTC).strftime(DATE_FORMAT)
    lines = ["# creditd benchmark results", "", "Written by `make bench` (`python -m bench`)."]
    lines += ["", "## Machine", ""] + [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", "## Settings", ""]
    lines += [
        f"- {opts.runs} run(s); each: pgbench TPC-B, pgbench hot row, then every phase for "
        f"{opts.duration} s (+{opts.warmup:g} s warm-up). Numbers below are medians over the "
        "runs.",
        f"- many users = {opts.users} seeded users picked at random; hot = one user.",
        f"- pgbench: TPC-B default script, scale {opts.pgbench_scale}, "
        f"{opts.pgbench_clients} clients, 2 threads, {opts.duration} s, database `bench_pgbench`.",
        f"- pgbench hot row: `bench/hot_row.sql`, TPC-B's transaction (UPDATE, SELECT, INSERT "
        f"into history) always on account `aid = 1`, {opts.clients} clients (as "
        f"`pairs/hot/{opts.clients}`), 2 threads, {opts.duration} s, same database: the "
        "baseline of one hot user.",
        f"- service: `creditd serve --workers {opts.service_workers} --no-workers` (HTTP worker "
        "processes; background jobs off), production settings, rate limit off; "
        "load generator: one asyncio process with a minimal HTTP/1.1 keep-alive client.",
        "- CPU % is per one core (100 = one core busy for the whole phase); `other` is every "
        "other process on the machine: other tenants, and the pgbench client during pgbench.",
    ]
    if opts.profile:
        lines.append("- **profiled**: the service ran under pyinstrument; not comparable.")
    lines += ["", "## Goals", ""]
    goal_rows = [[g, m, "met" if ok else "**NOT met**"] for g, m, ok in _goals(bench, phases)]
    lines += _table(["goal", "measured", ""], goal_rows)
    if before is not None:
        lines += before_after_lines(before, after or summarise(bench))
    lines += ["", "## Phases (medians)", "", *_table(PHASE_HEADER, _phase_rows(phases))]
    lines += ["", f"pgbench TPC-B: **{tps:.0f} tps**, latency average {pg_latency:.2f} ms."]
    lines += [
        f"pgbench hot row: **{hot_tps:.0f} tps**, latency average {hot_latency:.2f} ms "
        f"({opts.clients} clients)."
    ]
    lines += [
        "",
        "## CPU per request (medians)",
        "",
        "CPU % of the phase (100 = one core) over its requests/s: CPU-ms per request; a "
        "start+complete charge is two requests, a one-shot `usage` charge one.",
        "",
        *_table(CPU_HEADER, _cpu_rows(phases)),
    ]
    lines += ["", "## Runs", ""]
    many = opts.clients
    run_header = ["run", "pgbench tps", f"pairs/many/{many} req/s", "ratio (req/tps)"]
    run_header += ["charges/s", "charges per TPC-B txn", "hot-row tps"]
    run_header += [f"pairs/hot/{many} req/s", "hot ratio (req/tps)", f"usage/many/{many} charges/s"]
    run_header += ["usage / pairs charges"]
    if bench.runs[0].peer is not None:
        run_header += [f"{opts.peer} charges/s", "usage / peer", "pairs / peer"]
    run_header += ["start p99 ms", "check p99 ms", "CPU % during pgbench", "during hot row"]
    run_header += ["during pairs"]
    lines += _table(run_header, _run_rows(bench))
    lines += _peer_lines(bench) + _large_lines(bench)
    return "\n".join(lines) + "\n"


def console(bench: Benchmark) -> str:
    """The short summary printed at the end of a run."""
    phases = _median_phases(bench)
    tps = statistics.median(run.pgbench.tps for run in bench.runs)
    hot_tps = statistics.median(run.hot_row.tps for run in bench.runs)
    lines = [f"\n{'phase':<18} {'op':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for phase in phases:
        for op, s in phase.ops.items():
            lines.append(
                f"{phase.name:<18} {op:<9} {s.rps:>8.0f} {s.p50_ms:>8.2f} "
                f"{s.p99_ms:>8.2f} {s.errors:>7}{'  <- FAILED REQUESTS' if s.errors else ''}"
            )
    if bench.large is not None:
        for phase in bench.large.medians():
            s = phase.ops["start"]
            lines.append(f"{phase.name:<18} {'start':<9} {s.rps:>8.0f} {s.p50_ms:>8.2f} ")
            lines[-1] += f"{s.p99_ms:>8.2f} {s.errors:>7}"
    pairs = next(p for p in phases if p.name == f"pairs/many/{bench.options.clients}")
    lines.append(
        f"pgbench TPC-B: {tps:.0f} tps; {pairs.name} start+complete: {pairs.rps:.0f} req/s "
        f"= {charges(pairs):.0f} charges/s"
    )
    hot = next(p for p in phases if p.name == f"pairs/hot/{bench.options.clients}")
    lines.append(
        f"pgbench hot row: {hot_tps:.0f} tps; {hot.name} start+complete: {hot.rps:.0f} req/s "
        f"= {charges(hot):.0f} charges/s"
    )
    peers = [run.peer for run in bench.runs if run.peer is not None]
    if peers:
        rate = charges(median_phase(peers))
        lines.append(f"peer {bench.options.peer} deduct: {rate:.0f} charges/s")
    for goal, measured, ok in _goals(bench, phases):
        lines.append(f"{'OK  ' if ok else 'MISS'} {goal}: {measured}")
    return "\n".join(lines)
