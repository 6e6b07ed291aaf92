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
    keys: bool = True

    @property
    def keys_pair(self) -> tuple[str, str] | None:
        """(keyed, unkeyed) names of the throughput pairs phase run both ways, when keys are on."""
        name = f"pairs/many/{self.clients}"
        return (name, f"{name} no-keys") if self.keys else None

    def phases(self) -> list[PhaseSpec]:
        """The load phases of one run, in order: latency at few clients, then throughput."""
        few, many, keys = self.latency_clients, self.clients, self.keys
        phases = [
            PhaseSpec(f"pairs/many/{few}", "pairs", few, hot=False, keys=keys),
            PhaseSpec(f"check/many/{few}", "check", few, hot=False, keys=keys),
            PhaseSpec(f"pairs/many/{many}", "pairs", many, hot=False, keys=keys),
            PhaseSpec(f"pairs/hot/{many}", "pairs", many, hot=True, keys=keys),
            PhaseSpec(f"check/many/{many}", "check", many, hot=False, keys=keys),
        ]
        if self.keys_pair is not None:
            # The same throughput phase without keys, in the same run: what a key costs.
            phases.insert(3, PhaseSpec(self.keys_pair[1], "pairs", many, hot=False, keys=False))
        return phases


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
    add("--clients", type=int, default=16, help="clients of the throughput phases")
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
    args = parser.parse_args(argv)
    counts = (args.duration, args.runs, args.clients, args.latency_clients, args.users)
    if min(*counts, args.service_workers) < 1:
        parser.error(
            "--duration, --runs, --clients, --latency-clients, --users, --service-workers "
            "must be >= 1"
        )
    return Options(**vars(args))
