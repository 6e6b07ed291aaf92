"""The creditd service as a real subprocess: start, wait until ready, set up, seed, verify, stop."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.http import Connection
from bench.loadgen import HOT_USER, user_ids

CREDITD = Path(sys.executable).parent / "creditd"
SEED_CREDITS = 1_000_000
SEED_CONCURRENCY = 16


@dataclass(frozen=True)
class Service:
    """A running `creditd serve`."""

    process: subprocess.Popen[bytes]
    port: int
    admin_token: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database_url: str, admin_token: str = "") -> dict[str, str]:
    """The environment of `creditd` (production, no rate limit; a random token if none given)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CREDITD_ENV": "production",
        "CREDITD_ADMIN_TOKEN": admin_token or secrets.token_urlsafe(32),
        # Production requires a key for provider secrets at rest (a Fernet key).
        "CREDITD_PAYMENTS__SECRETS_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "CREDITD_API__RATE_LIMIT_PER_SECOND": "1000000",
        "CREDITD_API__RATE_LIMIT_BURST": "1000000",
        "CREDITD_API__PROJECT_RATE_LIMIT": "1000000/second",
        "CREDITD_LOG__LEVEL": "WARNING",
    }


@contextmanager
def run_service(
    database_url: str, log_path: Path, profile: Path | None, workers: int
) -> Iterator[Service]:
    """Start `creditd serve --migrate --no-workers`, wait for /readyz, stop it afterwards."""
    token, port = secrets.token_urlsafe(32), free_port()
    serve = ["serve", "--migrate", "--no-workers", "--workers", str(workers), "--port", str(port)]
    argv = [str(CREDITD), *serve]
    if profile is not None:
        argv = [sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(profile)]
        argv += ["-m", "app.cli", *serve]
    with run_process(argv, service_env(database_url, token), port, log_path) as process:
        yield Service(process, port, token)


@contextmanager
def run_process(
    argv: list[str], env: dict[str, str], port: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start an HTTP service (output to `log_path`), wait until its GET /readyz on `port`
    answers 200, and stop it afterwards with SIGINT (then SIGKILL after 30 s)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(wait_ready(process, port, log_path))
        yield process
    finally:
        process.send_signal(signal.SIGINT)  # like Ctrl-C: lets pyinstrument write its report
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Poll GET /readyz until 200 (at most 60 s); the service's log is at `log_path`."""
    conn = Connection(port, "")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; see {log_path}")
        try:
            if (await conn.request("GET", "/readyz")).status == 200:
                await conn.close()
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the service was not ready within 60 s; see {log_path}")


async def _must(conn: Connection, method: str, path: str, payload: object) -> object:
    """A setup request that must succeed; its decoded body."""
    response = await conn.request(method, path, payload)
    if not response.ok:
        raise RuntimeError(f"{method} {path} -> {response.status}: {response.body!r}")
    return response.json()


async def _setup(service: Service, users: int) -> str:
    """Create the project, price the default model, seed every user; return the API key."""
    admin = Connection(service.port, service.admin_token)
    project = await _must(admin, "POST", "/v1/admin/projects", {"name": "bench"})
    await admin.close()
    assert isinstance(project, dict)
    key: str = project["api_key"]["key"]
    conn = Connection(service.port, key)
    price = {"input_price_per_1k": 1, "output_price_per_1k": 2}
    await _must(conn, "PUT", "/v1/models/_default", price)
    await conn.close()
    queue = [HOT_USER, *user_ids(users)]
    await asyncio.gather(*(_seed(service.port, key, queue) for _ in range(SEED_CONCURRENCY)))
    return key


async def _seed(port: int, key: str, queue: list[str]) -> None:
    """Create users from the shared queue and grant them credits, until it is empty."""
    conn = Connection(port, key)
    while queue:
        user = queue.pop()
        await _must(conn, "POST", "/v1/users", {"id": user})
        await _must(conn, "POST", f"/v1/users/{user}/credits", {"amount": SEED_CREDITS})
    await conn.close()


def setup(service: Service, users: int) -> str:
    """Create the project and the seeded users; return the project's API key."""
    return asyncio.run(_setup(service, users))


def verify(database_url: str) -> tuple[bool, str]:
    """Run `creditd verify`: whether every ledger invariant holds, and its last line."""
    result = subprocess.run(
        [str(CREDITD), "verify"],
        env=service_env(database_url),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else f"exit code {result.returncode}"
