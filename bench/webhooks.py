"""Webhook dispatch throughput: deliveries per second from the outbox to a local receiver.

    python -m bench.webhooks [--events 20000] [--endpoints 1] [--runs 3] [--dispatchers 1 2]
                             [--transport http none]

Per run: N events are written in one transaction for a project with E endpoints (all
subscribed to everything) on a fresh set of tables; 1 (or 2) dispatcher processes, already
running and idle, fan them out and deliver them to a minimal HTTP/1.1 receiver (a raw asyncio
protocol answering 200, in a process of its own). Throughput = N x E deliveries over the time
from the events' commit to the last result recorded (both read from the database clock), so
it includes fan-out, claims, the requests, and writing every attempt row. The receiver counts
what it got: a duplicate would show.

Each dispatcher process is what `creditd worker` runs for webhooks (``Dispatcher`` with its
own pool of 4 connections and one ``Sender``), on the default asyncio loop as there. With
``--transport none`` its sender answers every attempt at once without a request: what the
dispatcher itself (fan-out, claims, attempt rows) moves through PostgreSQL, apart from HTTP.
The report goes into its own section of bench/RESULTS.md (``make bench`` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet

from bench.postgres import open_postgres
from bench.service import free_port

DATABASE = "bench_webhooks"
RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## Webhook dispatch throughput"
END = "<!-- end webhook dispatch -->"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the receiver (its own process) ----------------------------------------------------------


class _Receiver(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every POST is answered 200 and counted; GET returns the count."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            if head.startswith(b"post"):
                _Receiver.count += 1
                body = b"ok"
            elif head.startswith(b"delete"):
                _Receiver.count = 0
                body = b"0"
            else:
                body = str(_Receiver.count).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )


def serve_receiver(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Receiver, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _receiver_call(port: int, method: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} /count HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return int(body)


# --- a dispatcher (its own process) ----------------------------------------------------------


def run_dispatcher(url: str, key: str, per_endpoint: int, in_flight: int, transport: str) -> None:
    from app.core.secrets import SecretBox, parse_keys
    from app.core.settings import DatabaseSettings, WebhookSettings
    from app.db.engine import create_engine
    from app.db.session import Database
    from app.webhooks.dispatcher import Dispatcher
    from app.webhooks.sender import Outcome, Sender

    class NoRequest(Sender):
        """Every attempt succeeds at once, without a request: the dispatcher's own cost."""

        async def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
            await asyncio.sleep(0)
            return Outcome(True, 200, 0, "ok", None)

    settings = WebhookSettings(
        allow_http=True,
        allow_private_targets=True,
        max_in_flight=in_flight,
        max_in_flight_per_endpoint=per_endpoint,
    )

    async def main() -> None:
        db = Database(create_engine(DatabaseSettings(url=url), pool_size=4))
        sender = Sender(settings) if transport == "http" else NoRequest(settings)
        dispatcher = Dispatcher(db, settings, SecretBox(parse_keys(key)), sender)
        task = asyncio.create_task(dispatcher.run())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        async with db.transaction():  # connected: ready
            print("ready", flush=True)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await sender.aclose()
            await db.dispose()

    asyncio.run(main())


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.webhooks", *argv], stdout=subprocess.PIPE, env=os.environ
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    transport: str
    dispatchers: int
    deliveries: int
    seconds: float
    received: int

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


async def _prepare(url: str, endpoints: int, port: int, key: str) -> uuid.UUID:
    from app.core.ids import uuid7
    from app.core.secrets import SecretBox, parse_keys
    from app.webhooks import signing

    box = SecretBox(parse_keys(key))
    conn = await asyncpg.connect(url)
    try:
        project = uuid7()
        await conn.execute(
            "INSERT INTO projects (id, name, settings) VALUES ($1, 'bench', '{}')", project
        )
        for i in range(endpoints):
            await conn.execute(
                "INSERT INTO webhook_endpoints (id, project_id, url, event_types,"
                " secret_ciphertext) VALUES ($1, $2, $3, ARRAY['*'], $4)",
                uuid7(), project, f"http://127.0.0.1:{port}/e{i}",
                box.encrypt(signing.new_secret()),
            )  # fmt: skip
        return project
    finally:
        await conn.close()


async def _one_run(
    url: str,
    project: uuid.UUID,
    events: int,
    endpoints: int,
    port: int,
    setup: tuple[str, int],
) -> Result:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE webhook_attempts, webhook_deliveries, events")
        await _receiver_call(port, "DELETE")
        await conn.execute(
            "INSERT INTO events (id, project_id, type, user_id, data)"
            " SELECT gen_random_uuid(), $1, 'credits.granted', 'u_' || (g % 1000),"
            " jsonb_build_object('amount', g, 'balance', g * 10, 'source', 'bench')"
            " FROM generate_series(1, $2) AS g",
            project,
            events,
        )
        began: datetime = await conn.fetchval("SELECT clock_timestamp()")
        want = events * endpoints
        deadline = time.monotonic() + 600
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'pending'"
            )
            if done >= want:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {want} deliveries finished in 600 s")
            await asyncio.sleep(0.2)
        bad = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'"
        )
        if bad:
            raise RuntimeError(f"{bad} deliveries did not succeed")
        ended: datetime = await conn.fetchval("SELECT max(updated_at) FROM webhook_deliveries")
    finally:
        await conn.close()
    received = await _receiver_call(port, "GET")
    return Result(*setup, want, (ended - began).total_seconds(), received)


def measure(args: argparse.Namespace) -> list[Result]:
    key = Fernet.generate_key().decode()
    results: list[Result] = []
    with open_postgres(args.data_dir) as pg:
        from app.cli import run_migrations

        pg.recreate_database(DATABASE)
        url = pg.url(DATABASE)
        run_migrations(url)
        port = free_port()
        receiver = _start(["--receiver", str(port)])
        try:
            project = asyncio.run(_prepare(url, args.endpoints, port, key))
            for transport, count in _setups(args):
                argv = [url, key, str(args.per_endpoint), str(args.in_flight), transport]
                procs = [_start(["--dispatcher", *argv]) for _ in range(count)]
                try:
                    for i in range(1, args.runs + 1):
                        r = asyncio.run(
                            _one_run(
                                url, project, args.events, args.endpoints, port, (transport, count)
                            )
                        )
                        log(
                            f"{transport}, {count} dispatcher(s), run {i}: {r.deliveries}"
                            f" deliveries in {r.seconds:.2f} s = {r.rate:.0f}/s"
                            f" (receiver got {r.received})"
                        )
                        results.append(r)
                finally:
                    for p in procs:
                        _stop(p)
        finally:
            _stop(receiver)
        version = pg.version()
        where = "embedded" if pg.embedded is not None else "DATABASE_URL"
    args.server = f"PostgreSQL {version} ({where})"
    return results


def _setups(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(t, n) for t in args.transport for n in args.dispatchers]


def markdown(args: argparse.Namespace, results: list[Result]) -> str:
    lines = [
        SECTION,
        "",
        f"Written by `make bench-webhooks` (`python -m bench.webhooks`) on"
        f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.server}; {os.cpu_count()} cores.",
        "",
        f"- {args.events:,} events x {args.endpoints} endpoint(s) = "
        f"{args.events * args.endpoints:,} deliveries per run, {args.runs} runs per row"
        f" (median); `max_in_flight` {args.in_flight}, `max_in_flight_per_endpoint`"
        f" {args.per_endpoint} per dispatcher.",
        "- Timed from the events' commit to the last result recorded (database clock): fan-out,"
        " claims, the HTTP requests and one attempt row per delivery.",
        "- Receiver: a raw asyncio HTTP/1.1 server answering 200, in its own process, on the same"
        " machine; dispatchers are separate processes (what `creditd worker` runs).",
        "- The machine is shared and noisy (other tenants' work shows up as CPU we do not"
        " use): compare runs of one table, not across days.",
        "",
        "- `http`: the real `Sender` (httpx on the SSRF-guarded transport) posting to the"
        " receiver. `none`: a sender that answers every attempt at once without a request, i.e."
        " what the dispatcher itself (fan-out, claims, attempt rows) moves through PostgreSQL.",
        "- Reading: `http` is bound by the CPU of the HTTP client in the dispatcher process"
        " (`none` is several times faster on the same database); a second dispatcher adds"
        " throughput only where there are cores to spare besides PostgreSQL and the receiver.",
        "",
        "| transport | dispatchers | deliveries/s (median) | runs | requests - deliveries |",
        "|---|---|---:|---|---:|",
    ]
    for transport, count in _setups(args):
        rows = [r for r in results if (r.transport, r.dispatchers) == (transport, count)]
        rates = ", ".join(f"{r.rate:.0f}" for r in rows)
        extra = "n/a" if transport == "none" else str(sum(r.received - r.deliveries for r in rows))
        median = statistics.median(r.rate for r in rows)
        lines.append(f"| {transport} | {count} | **{median:.0f}** | {rates} | {extra} |")
    return "\n".join([*lines, "", END])


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of the report (or append it)."""
    text = path.read_text() if path.exists() else "# creditd benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        stop = text.find(END, start)
        stop = len(text) if stop < 0 else stop + len(END)
        text = text[:start].rstrip("\n") + "\n\n" + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    add = parser.add_argument
    add("--events", type=int, default=20_000)
    add("--endpoints", type=int, default=1)
    add("--runs", type=int, default=3)
    add("--dispatchers", type=int, nargs="+", default=[1, 2])
    add("--transport", nargs="+", choices=["http", "none"], default=["http", "none"])
    add("--per-endpoint", type=int, default=64, help="max_in_flight_per_endpoint")
    add("--in-flight", type=int, default=64, help="max_in_flight")
    add("--data-dir", type=Path, default=Path(".creditd/bench"))
    add("--output", type=Path, default=RESULTS, help="report to update ('-': print only)")
    add("--receiver", type=int, help=argparse.SUPPRESS)
    add("--dispatcher", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver is not None:
        serve_receiver(args.receiver)
        return 0
    if args.dispatcher is not None:
        url, key, per_endpoint, in_flight, transport = args.dispatcher
        run_dispatcher(url, key, int(per_endpoint), int(in_flight), transport)
        return 0
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = measure(args)
    section = markdown(args, results)
    print(section)
    if str(args.output) != "-":
        write_section(args.output, section)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
