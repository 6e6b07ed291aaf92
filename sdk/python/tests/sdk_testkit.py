"""Test machinery for the SDK: creditd in a subprocess (stoppable and restartable on the same
port) and a fault-injecting HTTP proxy in front of it."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

ADMIN_TOKEN = "sdk-test-operator-token-0123456789"
ROOT = Path(__file__).resolve().parents[3]  # the repository: where `app` lives


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``python -m app.cli serve`` on 127.0.0.1:``port`` against ``database_url``."""

    def __init__(
        self,
        database_url: str,
        port: int,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "CREDITD_ADMIN_TOKEN": ADMIN_TOKEN,
            "CREDITD_ENV": "test",
            "CREDITD_DATA_DIR": str(self.workdir / "data"),
            "CREDITD_LOG__LEVEL": "WARNING",
            "CREDITD_API__RATE_LIMIT_PER_SECOND": "100000",
            "CREDITD_API__RATE_LIMIT_BURST": "100000",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"creditd exited ({self._proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"creditd not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def verify(self) -> None:
        """`creditd verify` over the whole database: every money invariant holds."""
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "verify"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 violation(s)" in result.stdout, result.stdout


def create_project(base_url: str, name: str = "sdk-test") -> tuple[str, str]:
    """A new project through the operator API: (project id, admin API key)."""
    r = httpx.post(
        f"{base_url}/v1/admin/projects",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    return body["id"], body["api_key"]["key"]


# --- the fault proxy --------------------------------------------------------------------------

Action = Literal["respond", "drop_before_forward", "drop_after_forward", "delay_after_forward"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class Fault:
    """What to do instead of a plain forward, for the next ``times`` matching requests.

    ``respond``: answer ``status`` without forwarding. ``drop_before_forward``: close the
    connection without forwarding. ``drop_after_forward``: forward (the server acts), then close
    the connection without answering (the response is lost). ``delay_after_forward``: forward,
    then answer only after ``delay`` seconds (a client with a shorter timeout gives up first).
    """

    method: str  # "*" for any
    path_suffix: str
    action: Action
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class Exchange:
    """One request the proxy received and what became of it."""

    method: str
    path: str
    idempotency_key: str | None
    body: bytes
    at: float  # time.monotonic() on arrival
    fault: Action | None
    status: int | None  # what the client got (None: the connection was dropped)
    upstream_status: int | None  # what the server answered (None: not forwarded)
    code: str | None  # the problem code of an error response


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 (a free port) to ``upstream``, injecting faults."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.exchanges: list[Exchange] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def go_down(self) -> None:
        """From now on every connection is dropped unanswered: creditd is unreachable."""
        self.add(Fault("*", "", "drop_before_forward", times=10**9))

    def come_back(self) -> None:
        self.clear()

    def requests(self, method: str, path_suffix: str) -> list[Exchange]:
        with self._lock:
            return [
                e for e in self.exchanges if e.method == method and e.path.endswith(path_suffix)
            ]

    def wait_for(self, predicate: Callable[[Exchange], bool], timeout: float = 30.0) -> Exchange:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for exchange in self.exchanges:
                    if predicate(exchange):
                        return exchange
            time.sleep(0.005)
        raise TimeoutError("no matching exchange")

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.times > 0
                    and fault.method in ("*", method)
                    and path.endswith(fault.path_suffix)
                ):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        method, path = handler.command, handler.path.split("?", 1)[0]
        key = handler.headers.get("Idempotency-Key")
        fault = self._take_fault(method, path)

        def record(status: int | None, upstream: int | None, payload: bytes) -> None:
            code = None
            if payload.startswith(b"{") and (status or upstream or 0) >= 400:
                with contextlib.suppress(ValueError):
                    code = httpx.Response(200, content=payload).json().get("code")
            action = fault.action if fault is not None else None
            self._record(Exchange(method, path, key, body, arrived, action, status, upstream, code))

        if fault is not None and fault.action == "respond":
            payload = (
                b'{"type":"/errors/injected","code":"injected","title":"Injected fault",'
                b'"status":%d,"detail":"injected by the test proxy","instance":"%s"}'
                % (fault.status, path.encode())
            )
            # Recorded before the client can read its answer (and assert on the record).
            record(fault.status, None, payload)
            handler.send_response(fault.status)
            for name, value in fault.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/problem+json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if fault is not None and fault.action == "drop_before_forward":
            handler.close_connection = True
            record(None, None, b"")
            return
        try:
            status, headers, payload = self._forward(handler, body)
        except OSError:
            # The server is down: look like it to the client (a dropped connection).
            handler.close_connection = True
            record(None, None, b"")
            return
        if fault is not None and fault.action == "drop_after_forward":
            handler.close_connection = True
            record(None, status, payload)
            return
        record(status, status, payload)
        if fault is not None and fault.action == "delay_after_forward":
            time.sleep(fault.delay)
        try:
            handler.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:  # the client gave up waiting (timeout) and closed the connection
            handler.close_connection = True


@contextlib.contextmanager
def running_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
