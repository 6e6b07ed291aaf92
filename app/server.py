"""Running the HTTP server: one process, or N worker processes with SO_REUSEPORT sockets.

uvicorn's own ``--workers`` shares one listening socket, so whichever worker wins the accept
race takes the connection: a few long-lived keep-alive clients can all land on one process
while the others idle. Here each worker binds its own socket with SO_REUSEPORT and the kernel
spreads incoming connections across them.

SIGINT, SIGTERM and SIGHUP all shut the server down gracefully (uvicorn alone handles the first
two), so that `creditd serve` can stop its embedded PostgreSQL afterwards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import socket
import threading
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn

UVICORN_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "proxy_headers": True,
    "timeout_graceful_shutdown": 10,
}


def _listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Server(uvicorn.Server):
    """uvicorn's server, which also shuts down gracefully on SIGHUP (a closed terminal).

    uvicorn re-raises the signals it caught once it has shut down, with the handlers that were
    in place before it started: SIGHUP is restored first, so it is re-raised the same way.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)


def serve(app: Any, host: str, port: int) -> int:
    """Serve ``app`` in this process; 3 if it could not start (as ``uvicorn.run`` exits)."""
    server = Server(uvicorn.Config(app, host=host, port=port, **UVICORN_OPTIONS))
    server.run()
    return 0 if server.started else 3


def _worker(host: str, port: int) -> None:
    from app.main import serve_app  # noqa: PLC0415 - imported in the child process

    # The parent decides when workers stop. Once a worker has shut down gracefully on a signal
    # sent to the whole process group, uvicorn re-raises it: ignored, so the worker exits 0.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = _listen(host, port, reuse_port=True)
    server = Server(uvicorn.Config(serve_app(), **UVICORN_OPTIONS))
    server.run(sockets=[sock])


def serve_workers(workers: int, host: str, port: int) -> int:
    """Run ``workers`` processes sharing ``host:port``; stop all when one stops or on a signal.

    Returns once every worker has exited, so the caller can then stop what they used (the
    embedded database). Settings reach the workers through the environment (see `creditd serve`).
    """
    # Fail fast, in the parent, if the address is unusable.
    _listen(host, port, reuse_port=True).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(host, port), daemon=False) for _ in range(workers)]
    for proc in procs:
        proc.start()

    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    # Supervise: the first worker to exit (crash or signal) brings the others down, so an
    # orchestrator sees the failure and restarts the whole service.
    multiprocessing.connection.wait([p.sentinel for p in procs])
    stop(signal.SIGTERM, None)
    for proc in procs:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()
    codes = [proc.exitcode or 0 for proc in procs]
    return 0 if stopping and all(c in (0, -signal.SIGTERM) for c in codes) else 1
