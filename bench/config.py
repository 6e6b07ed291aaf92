"""Command-line options and the phase plan."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import PhaseSpec

RESULTS_PATH = Path(__file__).parent / "RESULTS.md"


@dataclass(frozen=True)
class Options:
    """Everything a benchmark run is parameterised by."""

    duration: int
    warmup: float
    runs: int
    clients: int
    latency_clients: int
    users: int
    pgbench_clients: int
    pgbench_scale: int
    data_dir: Path
    output: Path
    profile: bool
    service_workers: int
    # Peer comparison (bench/peer.py) and the large dataset (bench/scale.py): off by default.
    peer: str | None = None
    peer_source: str | None = None
    peer_env: Path = Path(".creditd/bench/peer-venv")
    seed_users: int = 0
    seed_ledger: int = 0
    hot_users: int = 1000
    # A fresh Idempotency-Key on every POST (the README's advice); the throughput pairs phase
    # then runs once more without keys in the same run, to show what a key costs.
    keys: bool = True
    # Before/after (bench/summary.py): write this run's JSON summary; compare with an earlier one.
    save: Path | None = None
    before: Path | None = None
    label: str | None = None

    def phases(self) -> list[PhaseSpec]:
        """The load phases of one run, in order: latency at few clients, then throughput."""
        few, many, keys = self.latency_clients, self.clients, self.keys
        phases = [
            PhaseSpec(f"pairs/many/{few}", "pairs", few, hot=False, keys=keys),
            PhaseSpec(f"check/many/{few}", "check", few, hot=False, keys=keys),
            PhaseSpec(f"pairs/many/{many}", "pairs", many, hot=False, keys=keys),
            PhaseSpec(f"pairs/hot/{many}", "pairs", many, hot=True, keys=keys),
            PhaseSpec(f"check/many/{many}", "check", many, hot=False, keys=keys),
            PhaseSpec(f"usage/many/{many}", "usage", many, hot=False, keys=keys),
        ]
        if keys:
            phases.insert(3, PhaseSpec(f"pairs/many/{many} no-keys", "pairs", many, hot=False,
                                       keys=False))  # fmt: skip
        return phases

    def large_phases(self) -> list[PhaseSpec]:
        """With --seed-users: start+complete at few clients over `hot_users` of the large
        population, then over all of it (random users)."""
        few, hot = self.latency_clients, min(self.hot_users, self.seed_users)
        return [
            PhaseSpec(f"pairs/large-hot{hot}/{few}", "pairs", few, hot=False, population=hot),
            PhaseSpec(
                f"pairs/large-random/{few}", "pairs", few, hot=False, population=self.seed_users
            ),
        ]


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark creditd start/complete/check against pgbench TPC-B "
        "on the same PostgreSQL (DATABASE_URL, or an embedded server).",
    )
    add = parser.add_argument
    add("--duration", type=int, default=10, help="measured seconds per phase (default 10)")
    add("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    add("--runs", type=int, default=3, help="repeat pgbench + every phase; report medians")
    add(
        "--clients",
        type=int,
        default=16,
        help="clients of the throughput phases and of pgbench on the hot row",
    )
    add("--latency-clients", type=int, default=4, help="clients of the latency phases")
    add("--users", type=int, default=1000, help="users of the many-users phases")
    add("--pgbench-clients", type=int, default=8)
    add("--pgbench-scale", type=int, default=10)
    add("--data-dir", type=Path, default=Path(".creditd/bench"), help="embedded server data")
    add("--output", type=Path, default=RESULTS_PATH, help="the Markdown report to write")
    add("--profile", action="store_true", help="run the service under pyinstrument")
    add(
        "--no-keys",
        dest="keys",
        action="store_false",
        help="send no Idempotency-Key (default: a fresh uuid4 key on every POST, and the "
        "throughput pairs phase once more without keys)",
    )
    add(
        "--service-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="`creditd serve --workers`: HTTP worker processes (default: one per core)",
    )
    add(
        "--peer",
        choices=["ducto"],
        help="also run a peer library's one-shot charge on the same PostgreSQL (bench/peer.py)",
    )
    add(
        "--peer-source",
        help="pip requirement the peer is installed from: a name, a path (checkout, sdist, "
        "wheel) or a URL (default: its public source, GitHub's archive of main; bench/peer.py)",
    )
    add(
        "--peer-env",
        type=Path,
        default=Path(".creditd/bench/peer-venv"),
        help="the peer's own virtualenv (created when missing)",
    )
    add("--seed-users", type=int, default=0, help="seed a large population (bench/scale.py)")
    add("--seed-ledger", type=int, default=0, help="ledger entries of the large population")
    add("--hot-users", type=int, default=1000, help="users of the large population's hot phase")
    add(
        "--save",
        type=Path,
        metavar="PATH",
        help="write this run's JSON summary here (for a later --before)",
    )
    add(
        "--before",
        type=Path,
        metavar="PATH",
        help="a summary an earlier run saved (--save): add a before/after section to the report",
    )
    add(
        "--label",
        metavar="TEXT",
        help="this run's name in its summary and the before/after section "
        "(default: `git rev-parse --short HEAD`, else 'unlabelled')",
    )
    args = parser.parse_args(argv)
    if args.seed_ledger and args.seed_ledger < args.seed_users:
        parser.error("--seed-ledger must be >= --seed-users (one grant entry per user)")
    counts = (args.duration, args.runs, args.clients, args.latency_clients, args.users)
    if min(*counts, args.service_workers) < 1:
        parser.error(
            "--duration, --runs, --clients, --latency-clients, --users, --service-workers "
            "must be >= 1"
        )
    return Options(**vars(args))
