"""`python -m bench --save` / `--before`: the JSON summary and the before/after section.

Built from fake benchmarks: no database, no load.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.config import Options
from bench.postgres import PgbenchResult
from bench.report import (
    BEFORE_AFTER_HEADER,
    BEFORE_AFTER_HEADING,
    Benchmark,
    Run,
    before_after_lines,
    markdown,
    summarise,
)
from bench.runner import other_sections
from bench.stats import OpStats, PhaseResult
from bench.summary import SCHEMA_VERSION, Summary, SummaryError, default_label, load, save

OPS = {"pairs": ("start", "complete"), "check": ("check",), "usage": ("usage",)}
# req/s of one operation in every phase: distinct per kind, so rows are told apart.
RPS = {"start": 400.0, "complete": 400.0, "check": 2000.0, "usage": 600.0}
MACHINE = {"CPU": "Test CPU", "cores": "2", "RAM": "4.0 GiB", "Python": "3.11.7", "OS": "Linux"}


def fake_bench(*, speed: float = 1.0, keys: bool = True, label: str = "after") -> Benchmark:
    """A benchmark of one run whose phases all ran at `speed` x RPS, pgbench at 1000 tps
    (TPC-B) and 1600 tps (hot row)."""
    opts = Options(
        duration=5,
        warmup=1.0,
        runs=1,
        clients=16,
        latency_clients=4,
        users=100,
        pgbench_clients=8,
        pgbench_scale=10,
        data_dir=Path("unused"),
        output=Path("unused.md"),
        profile=False,
        service_workers=2,
        keys=keys,
        label=label,
    )
    phases = []
    for spec in opts.phases():
        ops = {
            op: OpStats(requests=100, errors=0, rps=RPS[op] * speed, p50_ms=1.0, p99_ms=4.0)
            for op in OPS[spec.kind]
        }
        cpu = {"service": 80.0, "postgres": 40.0, "loadgen": 30.0, "other": 1.0}
        phases.append(PhaseResult(spec.name, spec.clients, opts.users, 5.0, ops, cpu))
    pg_cpu = {"postgres": 150.0}
    tpcb, hot_row = PgbenchResult(tps=1000.0, latency_ms=8.0), PgbenchResult(1600.0, 10.0)
    run = Run(tpcb, pg_cpu, hot_row, pg_cpu, phases)
    return Benchmark(opts, [run], "18.0", "embedded", True, "ok")


def table_rows(lines: list[str], first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell is `first_cell`."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "|" in line]
    return [row for row in rows if row[0] == first_cell]


def with_machine(summary: Summary) -> Summary:
    """`summary` as measured on MACHINE (the test host's machine() varies)."""
    return replace(summary, machine=dict(MACHINE))


def test_save_load_round_trip(tmp_path: Path) -> None:
    summary = summarise(fake_bench(label="abc1234"))
    path = tmp_path / "sub" / "before.json"
    save(summary, path)
    assert load(path) == summary
    data = orjson.loads(path.read_bytes())
    assert data["schema"] == SCHEMA_VERSION
    assert data["label"] == "abc1234"
    assert data["pgbench_tps"] == 1000.0
    assert data["pgbench_hot_row_tps"] == 1600.0
    assert data["postgres"] == "18.0 (embedded)"
    first = data["phases"][0]
    assert first == {
        "name": "pairs/many/4",
        "op": "start",
        "clients": 4,
        "rps": 400.0,
        "p50_ms": 1.0,
        "p99_ms": 4.0,
        # CPU % x 10 / the phase's req/s (start + complete = 800)
        "service_cpu_ms_per_req": 1.0,
        "postgres_cpu_ms_per_req": 0.5,
    }
    assert data["goals"] == {
        "pairs_req_per_pgbench_tps": 0.8,
        "charges_per_tpcb_txn": 0.4,
        # pairs/hot/16: 800 req/s over 1600 hot-row tps
        "hot_pairs_req_per_hot_row_tps": 0.5,
        "charges_per_hot_row_txn": 0.25,
        "usage_per_pairs_charges": 1.5,
        "keyed_per_unkeyed": 1.0,
    }


def test_summary_has_every_phase_and_op() -> None:
    bench = fake_bench()
    keys = [p.key for p in summarise(bench).phases]
    expected = [(spec.name, op) for spec in bench.options.phases() for op in OPS[spec.kind]]
    assert keys == expected


def test_no_keys_summary_has_no_keyed_ratio() -> None:
    assert "keyed_per_unkeyed" not in summarise(fake_bench(keys=False)).goals


def test_load_tolerates_other_versions(tmp_path: Path) -> None:
    data: dict[str, Any] = summarise(fake_bench()).to_json()
    data["future_field"] = {"x": 1}
    data["phases"][0]["future_stat"] = 3.0
    del data["phases"][0]["service_cpu_ms_per_req"]
    del data["postgres"]
    path = tmp_path / "old.json"
    path.write_bytes(orjson.dumps(data))
    loaded = load(path)
    assert loaded.phases[0].service_cpu_ms_per_req is None
    assert loaded.postgres == ""
    assert len(loaded.phases) == len(data["phases"])


@pytest.mark.parametrize(
    "content", [b"not json", b"[]", b'{"label": "x"}', b'{"schema": 1, "phases": [{}]}']
)
def test_load_rejects_what_is_not_a_summary(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SummaryError):
        load(path)


def test_table_rows_and_ratios() -> None:
    before = with_machine(summarise(fake_bench(label="old")))
    after = with_machine(summarise(fake_bench(speed=1.25, label="new")))
    lines = before_after_lines(before, after)
    assert lines[1] == BEFORE_AFTER_HEADING
    assert any("before: **old**" in line and "after: **new**" in line for line in lines)
    rows = table_rows(lines, "pairs/many/16")
    assert [r[1] for r in rows] == ["start", "complete"]
    # before/after req/s, ratio, p50, p99; service CPU-ms/req: 80 % x 10 / 800 then 1000 req/s
    expected = ["400", "500", "1.25x", "1.00 / 1.00", "4.00 / 4.00", "1.00 / 0.80"]
    assert rows[0][2:] == [*expected, "0.50 / 0.40"]
    check = ["check/many/4", "check", "2000", "2500", "1.25x", "1.00 / 1.00", "4.00 / 4.00"]
    assert table_rows(lines, "check/many/4") == [[*check, "0.40 / 0.32", "0.20 / 0.16"]]
    # One row per phase and op, in run order.
    header = lines.index("| " + " | ".join(BEFORE_AFTER_HEADER) + " |")
    block = lines[header + 2 : lines.index("", header)]
    keys = [(spec.name, op) for spec in fake_bench().options.phases() for op in OPS[spec.kind]]
    assert [tuple(row.strip("|").split("|")[:2]) for row in block] == [
        (f" {name} ", f" {op} ") for name, op in keys
    ]
    assert not any(line.startswith("- only ") for line in lines)
    assert table_rows(lines, "pgbench TPC-B tps") == [
        ["pgbench TPC-B tps", "1000", "1000", "1.00x"]
    ]
    assert table_rows(lines, "pgbench hot-row tps") == [
        ["pgbench hot-row tps", "1600", "1600", "1.00x"]
    ]
    hot = table_rows(lines, "(pairs/hot start+complete req/s) / pgbench hot-row tps")
    assert [row[1:] for row in hot] == [["0.500", "0.625", "1.25x"]]
    hot_charges = table_rows(lines, "charges per hot-row transaction")
    assert [row[1:] for row in hot_charges] == [["0.250", "0.312", "1.25x"]]
    ratio = table_rows(lines, "(start+complete req/s) / pgbench tps")
    assert ratio == [["(start+complete req/s) / pgbench tps", "0.800", "1.000", "1.25x"]]
    charges = table_rows(lines, "charges per TPC-B transaction")
    assert charges == [["charges per TPC-B transaction", "0.400", "0.500", "1.25x"]]
    usage = table_rows(lines, "one-shot usage / start+complete charges/s")
    assert usage[0][1:] == ["1.500", "1.500", "1.00x"]
    assert table_rows(lines, "keyed / unkeyed start+complete req/s")[0][1:3] == ["1.000", "1.000"]


def test_summary_without_hot_row_shows_dashes(tmp_path: Path) -> None:
    """A summary saved before the hot-row pgbench existed: its side of those rows is `-`."""
    data: dict[str, Any] = summarise(fake_bench(label="old")).to_json()
    del data["pgbench_hot_row_tps"]
    del data["goals"]["hot_pairs_req_per_hot_row_tps"]
    del data["goals"]["charges_per_hot_row_txn"]
    path = tmp_path / "old.json"
    path.write_bytes(orjson.dumps(data))
    before = with_machine(load(path))
    assert before.pgbench_hot_row_tps is None
    lines = before_after_lines(before, with_machine(summarise(fake_bench())))
    assert table_rows(lines, "pgbench hot-row tps") == [["pgbench hot-row tps", "-", "1600", "-"]]
    hot = table_rows(lines, "(pairs/hot start+complete req/s) / pgbench hot-row tps")
    assert [row[1:] for row in hot] == [["-", "0.500", "-"]]
    assert table_rows(lines, "charges per hot-row transaction")[0][1:] == ["-", "0.250", "-"]
    # and the other way round: this run's summary as the before of an old checkout's
    reverse = before_after_lines(with_machine(summarise(fake_bench())), before)
    assert table_rows(reverse, "pgbench hot-row tps") == [["pgbench hot-row tps", "1600", "-", "-"]]


def test_phase_on_one_side_only_is_reported() -> None:
    before = with_machine(summarise(fake_bench(keys=False)))
    after = with_machine(summarise(fake_bench()))
    lines = before_after_lines(before, after)
    only = [line for line in lines if line.startswith("- only ")]
    assert only == [
        "- only after: `pairs/many/16 no-keys` start, `pairs/many/16 no-keys` complete."
    ]
    assert table_rows(lines, "pairs/many/16 no-keys") == []
    assert len(table_rows(lines, "pairs/many/16")) == 2
    keyed = table_rows(lines, "keyed / unkeyed start+complete req/s")
    assert keyed == [["keyed / unkeyed start+complete req/s", "-", "1.000", "-"]]
    # and the other way round
    reverse = before_after_lines(after, before)
    assert [line for line in reverse if line.startswith("- only ")] == [
        only[0].replace("only after", "only before")
    ]


def test_same_machine_is_said() -> None:
    before = with_machine(summarise(fake_bench()))
    lines = before_after_lines(before, with_machine(summarise(fake_bench())))
    assert any(
        line.startswith("- both measured on the same machine (CPU Test CPU") for line in lines
    )
    assert not any("different machines" in line for line in lines)
    assert table_rows(lines, "machine") == []


def test_different_machines_are_flagged() -> None:
    before = with_machine(summarise(fake_bench()))
    before = replace(before, machine={**MACHINE, "CPU": "Old CPU", "cores": "8"})
    after = with_machine(summarise(fake_bench()))
    lines = before_after_lines(before, after)
    assert any("**measured on different machines**" in line for line in lines)
    assert not any("same machine" in line for line in lines)
    assert table_rows(lines, "CPU") == [["CPU", "Old CPU", "Test CPU"]]
    assert table_rows(lines, "cores") == [["cores", "8", "2"]]
    assert table_rows(lines, "RAM") == [["RAM", "4.0 GiB", "4.0 GiB"]]


def test_different_postgres_is_said() -> None:
    after = with_machine(summarise(fake_bench()))
    before = replace(after, postgres="17.2 (DATABASE_URL)")
    lines = before_after_lines(before, after)
    assert "- PostgreSQL: before 17.2 (DATABASE_URL), after 18.0 (embedded)." in lines


def test_markdown_has_the_section_only_with_before() -> None:
    bench = fake_bench()
    assert BEFORE_AFTER_HEADING not in markdown(bench)
    report = markdown(bench, summarise(fake_bench(speed=0.5, label="old")))
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings.index(BEFORE_AFTER_HEADING) == headings.index("## Goals") + 1
    assert "before: **old**" in report
    assert "- both measured on the same machine" in report  # machine() both times


HOT_GOAL = "hot single user: (pairs/hot start+complete req/s) / pgbench hot-row tps >= 0.5"


@pytest.mark.parametrize(
    ("speed", "measured", "verdict"),
    [
        (1.0, "0.500 (charges per hot-row transaction: 0.250)", "met"),
        (0.5, "0.250 (charges per hot-row transaction: 0.125)", "**NOT met**"),
    ],
)
def test_hot_single_user_goal(speed: float, measured: str, verdict: str) -> None:
    """pairs/hot/16 req/s (800 x speed) over the same run's hot-row pgbench tps (1600)."""
    lines = markdown(fake_bench(speed=speed)).splitlines()
    assert table_rows(lines, f"{HOT_GOAL} (16 clients)") == [
        [f"{HOT_GOAL} (16 clients)", measured, verdict]
    ]


CHECK_CPU_GOAL = "check: service (Python) CPU per request <= 0.5 ms (the worse of 4 and 16 clients)"


@pytest.mark.parametrize(
    ("speed", "measured", "verdict"), [(1.0, "0.40 ms", "met"), (0.5, "0.80 ms", "**NOT met**")]
)
def test_check_cpu_goal(speed: float, measured: str, verdict: str) -> None:
    """The service's 80 % of a core over the check phases' 2000 x speed req/s."""
    lines = markdown(fake_bench(speed=speed)).splitlines()
    assert table_rows(lines, CHECK_CPU_GOAL) == [[CHECK_CPU_GOAL, measured, verdict]]


def test_runs_table_and_settings_have_the_hot_row() -> None:
    lines = markdown(fake_bench()).splitlines()
    header = table_rows(lines, "run")[0]
    (row,) = table_rows(lines, "1")
    cells = dict(zip(header, row, strict=True))
    assert cells["hot-row tps"] == "1600"
    assert cells["pairs/hot/16 req/s"] == "800"
    assert cells["hot ratio (req/tps)"] == "0.500"
    assert cells["during hot row"] == "- / 150 / - / -"
    assert any(
        line.startswith("- pgbench hot row: `bench/hot_row.sql`") and "16 clients" in line
        for line in lines
    )
    assert "pgbench hot row: **1600 tps**, latency average 10.00 ms (16 clients)." in lines


def test_stale_section_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    old = "# r\n\n## Goals\n\ng\n\n" + BEFORE_AFTER_HEADING + "\n\nstale\n\n## Webhooks\n\nw\n"
    path.write_text(old)
    kept = other_sections(path, "# r\n\n## Goals\n\nnew\n")
    assert "## Webhooks" in kept
    assert "stale" not in kept


def test_default_label(monkeypatch: pytest.MonkeyPatch) -> None:
    label = default_label()
    assert label
    assert " " not in label

    def no_git(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert default_label() == "unlabelled"
