"""The JSON summary of a benchmark run (`--save`), read back by a later run (`--before`).

A summary may have been written by an older checkout of the bench: reading it keeps the fields
this version knows, ignores the others and leaves a figure it lacks out (None or absent).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

SCHEMA_VERSION = 1
UNLABELLED = "unlabelled"

# The goal figures a summary carries, with their labels in the before/after table.
GOAL_FIGURES = {
    "pairs_req_per_pgbench_tps": "(start+complete req/s) / pgbench tps",
    "charges_per_tpcb_txn": "charges per TPC-B transaction",
    "hot_pairs_req_per_hot_row_tps": "(pairs/hot start+complete req/s) / pgbench hot-row tps",
    "charges_per_hot_row_txn": "charges per hot-row transaction",
    "usage_per_pairs_charges": "one-shot usage / start+complete charges/s",
    "keyed_per_unkeyed": "keyed / unkeyed start+complete req/s",
}


class SummaryError(ValueError):
    """A file that is not a benchmark summary."""


@dataclass(frozen=True)
class OpFigures:
    """One operation of one phase (medians over the runs); CPU-ms are the phase's, per
    request of every operation (None when not measured)."""

    name: str
    op: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    service_cpu_ms_per_req: float | None = None
    postgres_cpu_ms_per_req: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What a before and an after row are matched by: phase name and operation."""
        return self.name, self.op


@dataclass(frozen=True)
class Summary:
    """What `--save` writes: the run's label, date, machine and headline figures."""

    label: str
    date: str
    machine: dict[str, str]
    pgbench_tps: float
    phases: list[OpFigures]
    goals: dict[str, float] = field(default_factory=dict)
    postgres: str = ""
    pgbench_hot_row_tps: float | None = None  # None: saved before the bench measured it
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, `schema` first."""
        data: dict[str, Any] = {"schema": self.schema, "label": self.label, "date": self.date}
        data |= {"machine": self.machine, "postgres": self.postgres}
        data |= {"pgbench_tps": self.pgbench_tps, "pgbench_hot_row_tps": self.pgbench_hot_row_tps}
        data["goals"] = self.goals
        data["phases"] = [{f.name: getattr(p, f.name) for f in fields(p)} for p in self.phases]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Summary:
        """The inverse of to_json, tolerant of fields added or dropped by other versions."""
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise SummaryError("not a benchmark summary (no `schema` version)")
        try:
            known = {f.name for f in fields(OpFigures)}
            hot_row = data.get("pgbench_hot_row_tps")
            phases = [
                OpFigures(**{k: v for k, v in p.items() if k in known}) for p in data["phases"]
            ]
            return cls(
                label=str(data.get("label") or UNLABELLED),
                date=str(data.get("date", "")),
                machine={str(k): str(v) for k, v in data.get("machine", {}).items()},
                pgbench_tps=float(data["pgbench_tps"]),
                phases=phases,
                goals={str(k): float(v) for k, v in data.get("goals", {}).items()},
                postgres=str(data.get("postgres", "")),
                pgbench_hot_row_tps=None if hot_row is None else float(hot_row),
                schema=data["schema"],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SummaryError(f"not a benchmark summary: {exc!r}") from exc


def save(summary: Summary, path: Path) -> None:
    """Write `summary` to `path` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2) + b"\n")


def load(path: Path) -> Summary:
    """Read a summary `save` wrote (SummaryError when it is not one, OSError when unreadable)."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SummaryError(f"{path}: not JSON: {exc}") from exc
    return Summary.from_json(data)


def default_label() -> str:
    """The bench checkout's `git rev-parse --short HEAD`, or "unlabelled" outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return UNLABELLED
    return result.stdout.strip() or UNLABELLED
