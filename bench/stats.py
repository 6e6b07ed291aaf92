"""Results of one load phase, their JSON form, and the medians over several runs."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(sorted_values: list[float], pct: float) -> float:
    """The nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class OpStats:
    """One operation's throughput and latency within a phase."""

    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def from_samples(cls, latencies_s: list[float], errors: int, seconds: float) -> OpStats:
        """Summarise the latencies (seconds) of the requests finished in the window."""
        ordered = sorted(latencies_s)
        return cls(
            requests=len(ordered),
            errors=errors,
            rps=len(ordered) / seconds if seconds > 0 else 0.0,
            p50_ms=percentile(ordered, 50) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
        )


@dataclass(frozen=True)
class PhaseResult:
    """What one phase measured: per-operation stats and CPU use (100 = one core busy)."""

    name: str
    clients: int
    users: int
    seconds: float
    ops: dict[str, OpStats]
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Failed requests across every operation."""
        return sum(op.errors for op in self.ops.values())

    @property
    def rps(self) -> float:
        """Requests per second across every operation."""
        return sum(op.rps for op in self.ops.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseResult:
        """The inverse of to_json."""
        ops = {name: OpStats(**op) for name, op in data["ops"].items()}
        return cls(**{**data, "ops": ops})


def median_phase(runs: list[PhaseResult]) -> PhaseResult:
    """One phase's medians over runs (errors are summed, not averaged)."""
    first = runs[0]
    ops = {
        name: OpStats(
            requests=sum(r.ops[name].requests for r in runs),
            errors=sum(r.ops[name].errors for r in runs),
            rps=statistics.median(r.ops[name].rps for r in runs),
            p50_ms=statistics.median(r.ops[name].p50_ms for r in runs),
            p99_ms=statistics.median(r.ops[name].p99_ms for r in runs),
        )
        for name in first.ops
    }
    cpu = {key: statistics.median(r.cpu[key] for r in runs) for key in first.cpu}
    return PhaseResult(first.name, first.clients, first.users, first.seconds, ops, cpu)
