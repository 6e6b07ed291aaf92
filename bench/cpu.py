"""CPU time of the service, PostgreSQL, the load generator and the whole machine (Linux /proc)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _own_seconds(fields: list[str]) -> float:
    """User + system CPU seconds in parsed stat fields."""
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_seconds(root: int) -> float:
    """CPU seconds of a process, its reaped children and its live ones (postmaster, backends)."""
    try:
        fields = _stat_fields(root)
    except OSError:
        return 0.0
    total = sum(int(v) for v in fields[11:15]) / TICKS
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue
        if int(fields[1]) == root:
            total += _own_seconds(fields)
    return total


def machine_seconds() -> float:
    """Busy CPU seconds of the whole machine, all cores (user, nice, system, irq, softirq)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (values[0] + values[1] + values[2] + values[5] + values[6]) / TICKS


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one instant."""

    wall: float
    service: float
    postgres: float | None
    loadgen: float
    machine: float

    @classmethod
    def take(cls, service_pid: int, postmaster_pid: int | None) -> CpuSample:
        """Read every counter now."""
        return cls(
            wall=time.perf_counter(),
            service=tree_seconds(service_pid),  # uvicorn workers are its children
            postgres=None if postmaster_pid is None else tree_seconds(postmaster_pid),
            loadgen=time.process_time(),
            machine=machine_seconds(),
        )

    def percent_since(self, start: CpuSample) -> dict[str, float]:
        """CPU use between two samples, in percent of one core."""
        wall = self.wall - start.wall

        def pct(now: float, then: float) -> float:
            return round(100 * (now - then) / wall, 1)

        usage = {
            "service": pct(self.service, start.service),
            "loadgen": pct(self.loadgen, start.loadgen),
            "machine": pct(self.machine, start.machine),
        }
        if self.postgres is not None and start.postgres is not None:
            usage["postgres"] = pct(self.postgres, start.postgres)
        ours = usage["service"] + usage["loadgen"] + usage.get("postgres", 0.0)
        usage["other"] = round(usage["machine"] - ours, 1)
        return usage
