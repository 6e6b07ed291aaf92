"""The PostgreSQL under test: DATABASE_URL's server, or the embedded one; psql and pgbench."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from app.db import embedded

TPS_LINE = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
LATENCY_LINE = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)


@dataclass(frozen=True)
class PgbenchResult:
    """TPC-B throughput and mean latency."""

    tps: float
    latency_ms: float


@dataclass(frozen=True)
class Postgres:
    """A server reachable at `base_url` (a libpq URI); `embedded` when we started it."""

    base_url: str
    embedded: embedded.EmbeddedServer | None

    def url(self, database: str) -> str:
        """The URI of another database on the same server."""
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command and return its unaligned output."""
        argv = [str(embedded.BIN_DIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-d", self.url(database), "-c", sql]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def recreate_database(self, name: str) -> None:
        """Drop (forcing out any session) and create an empty database."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')

    def version(self) -> str:
        """The server's version string."""
        return self.psql("SHOW server_version")

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid when the server is ours (for CPU accounting), else None."""
        return None if self.embedded is None else int(self.embedded.handle.get_pid())

    def pgbench_init(self, database: str, scale: int) -> None:
        """Create and fill the TPC-B tables."""
        argv = [str(embedded.BIN_DIR / "pgbench"), "-i", "-q", "-s", str(scale)]
        subprocess.run([*argv, self.url(database)], check=True, capture_output=True)

    def pgbench_run(
        self, database: str, clients: int, seconds: int, script: Path | None = None
    ) -> PgbenchResult:
        """Run the default TPC-B script (or a custom `script` file) for `seconds` and parse
        its tps."""
        argv = [str(embedded.BIN_DIR / "pgbench"), "-n", "-c", str(clients), "-j", "2"]
        if script is not None:
            argv += ["-f", str(script)]
        argv += ["-T", str(seconds), self.url(database)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        tps, latency = TPS_LINE.search(out), LATENCY_LINE.search(out)
        if tps is None or latency is None:
            raise RuntimeError(f"cannot parse pgbench output:\n{out}")
        return PgbenchResult(float(tps.group(1)), float(latency.group(1)))


def _libpq_url(url: str) -> str:
    """DATABASE_URL with a driver suffix (postgresql+asyncpg://) turned into a libpq URI."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


@contextmanager
def open_postgres(data_dir: Path) -> Iterator[Postgres]:
    """DATABASE_URL's server, or an embedded one in `data_dir` that is stopped afterwards."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield Postgres(_libpq_url(url), None)
        return
    server = embedded.start(data_dir)
    try:
        yield Postgres(server.url("postgres"), server)
    finally:
        server.stop()
