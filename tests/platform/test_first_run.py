"""`make run` / `creditd serve` on the embedded database: every way of stopping them stops the
PostgreSQL they started, and a server left behind by a `kill -9` is adopted and stopped.

These run real processes (make, uv, creditd, PostgreSQL) on a private data dir each, the way a
developer or systemd would drive them, and look for leftover PostgreSQL processes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.db import embedded

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 240  # generous: a loaded 2-core CI box takes a while to initdb and migrate
STOP_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(data_dir: Path) -> dict[str, str]:
    """This environment minus any database or creditd settings (and the outer make's flags)."""
    skip = {"DATABASE_URL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if k not in skip and not k.startswith("CREDITD_")}
    env["CREDITD_DATA_DIR"] = str(data_dir)
    return env


class Run:
    """One `make run` or `creditd serve` in its own process group, its output in a file."""

    def __init__(self, argv: list[str], data_dir: Path, port: int, log: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log = log
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_env(data_dir),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not serving after {STARTUP_SECONDS}s:\n{self.output}")

    def wait_exited(self) -> int:
        try:
            return self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {STOP_SECONDS}s later:\n{self.output}") from None

    def kill(self) -> None:
        """Leave nothing behind when a test fails half-way."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def postgres_processes(data_dir: Path) -> list[int]:
    """Live PostgreSQL processes of ``data_dir``: its postmaster (by its ``-D``) and children."""
    pgdata = str((data_dir / "pg").resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if pgdata in (proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
            with_children = [c.pid for c in proc.children(recursive=True)]
            found.extend(with_children)
    return found


def assert_no_postgres_left(data_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        gone = not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        if gone and not postgres_processes(data_dir):
            assert not (data_dir / embedded.OWNER_FILE).exists()
            return
        time.sleep(0.2)
    raise AssertionError(f"PostgreSQL still running: {postgres_processes(data_dir)}")


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data dir for the module: initdb once, each test leaves it stopped (or stops it).

    Not under pytest's tmp_path: as root, PostgreSQL runs as another user that must reach the
    data dir, and every pytest session (ours or another's) re-closes /tmp/pytest-of-root.
    """
    path = Path(tempfile.mkdtemp(prefix="creditd-first-run-"))
    yield path
    if (path / "pg" / "PG_VERSION").exists():
        embedded._stop(path / "pg")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runs(data_dir: Path, tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()
    embedded._stop(data_dir / "pg")


def make_run(runs: list[Run], data_dir: Path, tmp_path: Path) -> Run:
    port = _free_port()
    argv = ["make", "--no-print-directory", "run", "HOST=127.0.0.1", f"PORT={port}"]
    runs.append(Run(argv, data_dir, port, tmp_path / f"make-run-{len(runs)}.log"))
    return runs[-1]


def serve(runs: list[Run], data_dir: Path, tmp_path: Path, *extra: str) -> Run:
    port = _free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *extra]
    runs.append(Run(argv, data_dir, port, tmp_path / f"serve-{len(runs)}.log"))
    return runs[-1]


def test_sigterm_to_make_run_stops_the_embedded_postgres(
    runs: list[Run], data_dir: Path, tmp_path: Path
) -> None:
    run = make_run(runs, data_dir, tmp_path)
    run.wait_until_serving()
    pid = postmaster_pid(data_dir)
    assert postgres_processes(data_dir)

    run.proc.send_signal(signal.SIGTERM)  # to make alone, as `kill <pid>` does

    run.wait_exited()
    assert_no_postgres_left(data_dir, pid)
    assert "Traceback" not in run.output


def test_sighup_to_make_runs_process_group_stops_the_embedded_postgres(
    runs: list[Run], data_dir: Path, tmp_path: Path
) -> None:
    run = make_run(runs, data_dir, tmp_path)
    run.wait_until_serving()
    pid = postmaster_pid(data_dir)

    os.killpg(run.proc.pid, signal.SIGHUP)  # what a closed terminal does

    run.wait_exited()
    assert_no_postgres_left(data_dir, pid)
    assert "Traceback" not in run.output


def test_sigint_stops_workers_first_then_the_embedded_postgres(
    runs: list[Run], data_dir: Path, tmp_path: Path
) -> None:
    run = serve(runs, data_dir, tmp_path, "--workers", "2")
    run.wait_until_serving()
    pid = postmaster_pid(data_dir)
    children = psutil.Process(run.proc.pid).children()  # the 2 workers (and a resource tracker)
    assert len(children) >= 2

    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal

    assert run.wait_exited() == 0
    _, alive = psutil.wait_procs(children, timeout=STOP_SECONDS)
    assert not alive
    assert_no_postgres_left(data_dir, pid)
    assert "Traceback" not in run.output


def test_a_server_left_by_kill_9_is_adopted_then_stopped_and_others_only_attach(
    runs: list[Run], data_dir: Path, tmp_path: Path
) -> None:
    first = serve(runs, data_dir, tmp_path)
    first.wait_until_serving()
    pid = postmaster_pid(data_dir)

    # Another process on the same data dir while its owner lives: it attaches, leaves it running.
    verify = subprocess.run(
        [sys.executable, "-m", "app.cli", "verify"],
        cwd=ROOT,
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert psutil.pid_exists(pid)

    os.killpg(first.proc.pid, signal.SIGKILL)  # a crash: nothing of creditd runs any more
    first.wait_exited()
    assert postgres_processes(data_dir), "PostgreSQL should outlive a kill -9 of its owner"

    second = serve(runs, data_dir, tmp_path)
    second.wait_until_serving()
    assert postmaster_pid(data_dir) == pid  # the stale server was reused
    assert f"left running by pid {first.proc.pid}, which is gone" in second.output

    second.proc.send_signal(signal.SIGTERM)

    assert second.wait_exited() == 128 + signal.SIGTERM
    assert_no_postgres_left(data_dir, pid)
