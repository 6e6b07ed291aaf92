"""The webhook sender: SSRF guard at the connect seam, timeouts, no redirects, bounded reads.

Real traffic goes only to receivers on 127.0.0.1. The guard is tested through a fake resolver
and a recording connector; a tripwire (autouse) fails any test whose code would open a socket
to a non-loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.core.settings import WebhookSettings
from app.webhooks.sender import RETRY_AFTER_CAP_SECONDS, Outcome, Sender
from app.webhooks.ssrf import forbidden
from tests.fakes.webhook_receiver import Reply, webhook_receiver

PUBLIC_IP = "93.184.216.34"
FORBIDDEN = ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fc00::1"]
BODY = b'{"type":"webhook.test","timestamp":"2026-01-01T00:00:00Z","data":{}}'
HEADERS = {"webhook-id": "evt_1", "webhook-timestamp": "1767225600", "webhook-signature": "v1,x"}


# --- the tripwire: no socket to anything but loopback, whatever the code under test does ---


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple):
        try:
            return ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback
        except ValueError:
            return str(address[0]) == "localhost"
    return True  # a unix socket path


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(sock: socket.socket, address: Any) -> None:
        assert _is_loopback(address), f"test tried to connect to {address!r}"
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        assert _is_loopback(address), f"test tried to connect to {address!r}"
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def test_tripwire_stops_a_non_loopback_connect_before_the_system_call() -> None:
    with socket.socket() as sock, pytest.raises(AssertionError, match=r"192\.0\.2\.1"):
        sock.connect(("192.0.2.1", 9))


# --- seams ---


class FakeResolver:
    """Answers from a script: ``answers[host]`` is a list, or a list per successive call."""

    def __init__(self, answers: dict[str, Sequence[str] | Callable[[int], Sequence[str]]]):
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer(len(self.calls)) if callable(answer) else answer


class RecordingConnector(httpcore.AsyncNetworkBackend):
    """Records every connect; routes the addresses in ``routes`` to a real loopback port,
    and fails every other one (no socket)."""

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]] | None = None) -> None:
        self.routes = routes or {}
        self.calls: list[tuple[str, int, float | None]] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.calls.append((host, port, timeout))
        if (host, port) in self.routes:
            to_host, to_port = self.routes[host, port]
            return await self._real.connect_tcp(to_host, to_port, timeout=timeout)
        raise httpcore.ConnectError("fake network: no route")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @property
    def hosts(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, _ in self.calls]


def make_settings(**overrides: Any) -> WebhookSettings:
    return WebhookSettings(**overrides)


@asynccontextmanager
async def sender(settings: WebhookSettings, **seams: Any) -> AsyncIterator[Sender]:
    s = Sender(settings, **seams)
    try:
        yield s
    finally:
        await s.aclose()


def url_for(ip: str, scheme: str = "https", path: str = "/hook") -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{scheme}://{host}{path}"


def port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


# --- the SSRF guard, without sockets ---


@pytest.mark.parametrize("address", FORBIDDEN)
async def test_host_resolving_to_a_forbidden_address_is_refused_without_connecting(
    address: str,
) -> None:
    resolver = FakeResolver({"hook.example": [address]})
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=resolver, connector=connector) as s:
        outcome = await s.send("https://hook.example/in?token=secret", HEADERS, BODY)

    assert outcome.refused
    assert not outcome.ok
    assert outcome.status_code is None
    assert outcome.error is not None
    assert outcome.error.startswith("refused: the host resolves to a ")
    assert address not in outcome.error
    assert "secret" not in outcome.error
    assert resolver.calls == [("hook.example", 443)]
    assert connector.calls == []


@pytest.mark.parametrize("address", FORBIDDEN)
async def test_literal_ip_url_of_a_forbidden_address_is_refused_without_resolving_or_connecting(
    address: str,
) -> None:
    resolver = FakeResolver({})
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=resolver, connector=connector) as s:
        outcome = await s.send(url_for(address), HEADERS, BODY)

    assert outcome.refused
    assert outcome.error is not None
    assert outcome.error.startswith("refused: the host resolves to a ")
    assert address not in outcome.error
    assert resolver.calls == []
    assert connector.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "https://[::ffff:127.0.0.1]/hook",  # IPv4-mapped
        "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "https://0.0.0.0/hook",
        "https://[fd00:ec2::254]/hook",  # AWS metadata over IPv6
        "https://100.100.100.200/hook",  # Alibaba metadata
    ],
)
async def test_other_spellings_of_forbidden_literals_are_refused(url: str) -> None:
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=FakeResolver({}), connector=connector) as s:
        outcome = await s.send(url, HEADERS, BODY)

    assert outcome.refused, outcome
    assert connector.calls == []


async def _numeric_only(host: str, port: int) -> list[str]:
    # getaddrinfo as the default resolver calls it, but never asking a name server.
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )
    return [str(info[4][0]) for info in infos]


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1"])
async def test_obfuscated_loopback_hosts_are_refused_after_resolution(host: str) -> None:
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=_numeric_only, connector=connector) as s:
        outcome = await s.send(f"https://{host}/hook", HEADERS, BODY)

    assert outcome.error == "refused: the host resolves to a loopback address"
    assert connector.calls == []


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ([PUBLIC_IP, "10.0.0.1"], "refused: the host resolves to a private address"),
        (["10.0.0.1", PUBLIC_IP], "refused: the host resolves to a private address"),
        ([PUBLIC_IP, "::1"], "refused: the host resolves to a loopback address"),
    ],
)
async def test_host_with_one_public_and_one_private_answer_is_refused(
    answer: list[str], error: str
) -> None:
    connector = RecordingConnector()
    resolver = FakeResolver({"mixed.example": answer})
    async with sender(make_settings(), resolver=resolver, connector=connector) as s:
        outcome = await s.send("https://mixed.example/hook", HEADERS, BODY)

    assert outcome.refused
    assert outcome.error == error
    # The recorded error is shown to the tenant: it never names the internal address.
    assert not any(address in outcome.error for address in answer)
    assert connector.calls == []


async def test_public_answer_reaches_the_connector_as_the_checked_ip() -> None:
    resolver = FakeResolver({"hook.example": [PUBLIC_IP]})
    connector = RecordingConnector()  # no route: fails the connect, no socket
    async with sender(make_settings(), resolver=resolver, connector=connector) as s:
        outcome = await s.send("https://hook.example:8443/in?token=secret", HEADERS, BODY)

    assert connector.hosts == [(PUBLIC_IP, 8443)]
    assert outcome == Outcome(
        ok=False,
        status_code=None,
        latency_ms=outcome.latency_ms,
        excerpt=None,
        error="connect_error",
    )


async def test_every_checked_answer_is_tried_in_order_when_a_connect_fails() -> None:
    resolver = FakeResolver({"hook.example": ["2606:2800:220:1::1", PUBLIC_IP]})
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=resolver, connector=connector) as s:
        outcome = await s.send("https://hook.example/in", HEADERS, BODY)

    assert connector.hosts == [("2606:2800:220:1::1", 443), (PUBLIC_IP, 443)]
    assert outcome.error == "connect_error"


async def test_connect_gets_the_connect_timeout() -> None:
    resolver = FakeResolver({"hook.example": [PUBLIC_IP]})
    connector = RecordingConnector()
    settings = make_settings(connect_timeout_seconds=2.0, timeout_seconds=10.0)
    async with sender(settings, resolver=resolver, connector=connector) as s:
        await s.send("https://hook.example/in", HEADERS, BODY)

    [(_, _, timeout)] = connector.calls
    assert timeout is not None
    assert 0 < timeout <= 2.0


async def test_rebinding_answer_is_never_used_the_connection_goes_to_the_checked_address() -> None:
    # First answer public, every later one loopback: a client that resolved again at connect
    # time would reach 127.0.0.1. The fake network routes the public address to our receiver.
    async with webhook_receiver() as rx:
        port = port_of(rx.url)
        resolver = FakeResolver(
            {"hook.example": lambda n: [PUBLIC_IP] if n == 1 else ["127.0.0.1"]}
        )
        connector = RecordingConnector({(PUBLIC_IP, port): ("127.0.0.1", port)})
        settings = make_settings(allow_http=True)
        async with sender(settings, resolver=resolver, connector=connector) as s:
            outcome = await s.send(f"http://hook.example:{port}/in", HEADERS, BODY)

        assert outcome.ok, outcome
        assert resolver.calls == [("hook.example", port)]
        assert connector.hosts == [(PUBLIC_IP, port)]
        [received] = rx.requests
        assert received.headers["host"] == f"hook.example:{port}"


async def test_each_new_connection_is_resolved_and_checked_again() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(headers={"connection": "close"})
        port = port_of(rx.url)
        resolver = FakeResolver(
            {"hook.example": lambda n: [PUBLIC_IP] if n == 1 else ["127.0.0.1"]}
        )
        connector = RecordingConnector({(PUBLIC_IP, port): ("127.0.0.1", port)})
        settings = make_settings(allow_http=True)
        async with sender(settings, resolver=resolver, connector=connector) as s:
            first = await s.send(f"http://hook.example:{port}/in", HEADERS, BODY)
            second = await s.send(f"http://hook.example:{port}/in", HEADERS, BODY)

        assert first.ok
        assert second.refused
        assert second.error == "refused: the host resolves to a loopback address"
        assert len(resolver.calls) == 2
        assert connector.hosts == [(PUBLIC_IP, port)]
        assert len(rx.requests) == 1


async def test_unresolvable_host_is_a_dns_error() -> None:
    connector = RecordingConnector()
    async with sender(make_settings(), resolver=FakeResolver({}), connector=connector) as s:
        outcome = await s.send("https://nowhere.example/hook", HEADERS, BODY)

    assert outcome.error == "dns_error"
    assert not outcome.refused
    assert connector.calls == []


async def test_hanging_resolver_is_cut_by_the_connect_timeout() -> None:
    async def never(_host: str, _port: int) -> Sequence[str]:
        await asyncio.sleep(60)
        return [PUBLIC_IP]

    connector = RecordingConnector()
    settings = make_settings(connect_timeout_seconds=0.2, timeout_seconds=0.3)
    async with sender(settings, resolver=never, connector=connector) as s:
        started = time.monotonic()
        outcome = await s.send("https://hook.example/hook", HEADERS, BODY)
        elapsed = time.monotonic() - started

    assert outcome.error == "timeout"
    assert elapsed < 5 * 0.3
    assert connector.calls == []


async def test_hanging_connect_is_cut_by_the_total_timeout() -> None:
    class Stuck(RecordingConnector):
        async def connect_tcp(self, host: str, port: int, *args: Any, **kw: Any) -> Any:
            self.calls.append((host, port, None))
            await asyncio.sleep(60)  # ignores the timeout it was given

    connector = Stuck()
    settings = make_settings(timeout_seconds=0.3, connect_timeout_seconds=0.3)
    resolver = FakeResolver({"hook.example": [PUBLIC_IP]})
    async with sender(settings, resolver=resolver, connector=connector) as s:
        started = time.monotonic()
        outcome = await s.send("https://hook.example/hook", HEADERS, BODY)
        elapsed = time.monotonic() - started

    assert outcome.error == "timeout"
    assert outcome.status_code is None
    assert elapsed < 5 * 0.3
    assert connector.hosts == [(PUBLIC_IP, 443)]


# --- scheme ---


async def test_http_url_is_refused_when_http_is_not_allowed() -> None:
    async with webhook_receiver() as rx:
        settings = make_settings(allow_private_targets=True, allow_http=False)
        async with sender(settings) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.refused
        assert outcome.error == "refused: scheme http not allowed"
        assert rx.requests == []


@pytest.mark.parametrize("url", ["ftp://hook.example/x", "file:///etc/passwd", "not a url"])
async def test_other_schemes_are_refused(url: str) -> None:
    connector = RecordingConnector()
    async with sender(make_settings(allow_http=True), connector=connector) as s:
        outcome = await s.send(url, HEADERS, BODY)

    assert outcome.refused
    assert outcome.error is not None
    assert outcome.error.startswith("refused: ")
    assert connector.calls == []


# --- real loopback traffic (allow_private_targets on) ---

LOOPBACK = {"allow_private_targets": True, "allow_http": True}


async def test_loopback_receiver_is_delivered_to_when_private_targets_are_allowed() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=204, body=b"")
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.ok
        assert outcome.status_code == 204
        assert outcome.error is None
        assert not outcome.refused
        [received] = rx.requests
        assert received.path == "/hook"
        assert received.body == BODY
        for name, value in HEADERS.items():
            assert received.headers[name] == value
        assert received.headers["content-type"] == "application/json"
        assert received.headers["user-agent"].startswith("creditd-webhooks/")
        assert received.headers["accept-encoding"] == "identity"  # no compressed excerpts


async def test_response_body_is_read_as_the_excerpt() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=200, body="reçu".encode())
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.ok
        assert outcome.excerpt == "reçu"


async def test_redirect_is_a_failure_and_is_not_followed() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda req, _n: (
            Reply(status=302, headers={"location": rx.url + "/elsewhere"})
            if req.path == "/hook"
            else Reply()
        )
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert not outcome.ok
        assert outcome.status_code == 302
        assert outcome.error == "redirect"
        assert [r.path for r in rx.requests] == ["/hook"]


async def test_410_is_gone() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=410, body=b"no more")
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert not outcome.ok
        assert outcome.gone
        assert outcome.status_code == 410
        assert outcome.excerpt == "no more"


async def test_429_retry_after_in_seconds_is_read() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=429, headers={"retry-after": "7"})
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert not outcome.ok
        assert not outcome.gone
        assert outcome.status_code == 429
        assert outcome.retry_after == 7.0


async def test_503_retry_after_as_an_http_date_is_read() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(
            status=503, headers={"retry-after": format_datetime(when, usegmt=True)}
        )
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.status_code == 503
        assert outcome.retry_after is not None
        assert 100 <= outcome.retry_after <= 120


async def test_retry_after_is_capped() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=429, headers={"retry-after": "99999999"})
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.retry_after == RETRY_AFTER_CAP_SECONDS


async def test_retry_after_on_a_500_is_ignored() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=500, headers={"retry-after": "7"})
        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.status_code == 500
        assert outcome.retry_after is None


async def test_500_is_a_failure_with_the_excerpt_truncated() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=500, body=b"x" * 200_000)
        async with sender(make_settings(**LOOPBACK, response_excerpt_bytes=16)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert not outcome.ok
        assert outcome.status_code == 500
        assert outcome.excerpt == "x" * 16


async def test_excerpt_drops_a_character_cut_at_the_limit() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(status=500, body="é".encode() * 10)
        async with sender(make_settings(**LOOPBACK, response_excerpt_bytes=5)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.excerpt == "éé"


async def test_slow_receiver_times_out() -> None:
    async with webhook_receiver() as rx:
        rx.respond = lambda _req, _n: Reply(delay=2.0)
        settings = make_settings(**LOOPBACK, timeout_seconds=0.3, connect_timeout_seconds=0.3)
        async with sender(settings) as s:
            started = time.monotonic()
            outcome = await s.send(rx.url + "/hook?token=secret", HEADERS, BODY)
            elapsed = time.monotonic() - started

        assert outcome == Outcome(
            ok=False, status_code=None, latency_ms=outcome.latency_ms, excerpt=None, error="timeout"
        )
        assert elapsed < 5 * 0.3
        assert len(rx.requests) == 1  # it was sent; the answer never came in time


async def test_connection_is_reused_for_the_same_origin() -> None:
    async with webhook_receiver() as rx:
        port = port_of(rx.url)
        resolver = FakeResolver({"receiver.test": ["127.0.0.1"]})
        connector = RecordingConnector({("127.0.0.1", port): ("127.0.0.1", port)})
        async with sender(make_settings(**LOOPBACK), resolver=resolver, connector=connector) as s:
            outcomes = [
                await s.send(f"http://receiver.test:{port}/hook", HEADERS, BODY) for _ in range(3)
            ]

        assert all(o.ok for o in outcomes)
        assert len(rx.requests) == 3
        assert connector.hosts == [("127.0.0.1", port)]
        assert resolver.calls == [("receiver.test", port)]


async def test_proxy_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as placeholder:  # a loopback port with nobody listening
        placeholder.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)

    async with webhook_receiver() as rx:
        # The premise: a client that trusts the environment goes to the dead proxy.
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.ConnectError):
                await plain.post(rx.url + "/plain", content=BODY)
        assert rx.requests == []

        async with sender(make_settings(**LOOPBACK)) as s:
            outcome = await s.send(rx.url + "/hook", HEADERS, BODY)

        assert outcome.ok
        assert [r.path for r in rx.requests] == ["/hook"]


# --- raw servers: bodies that never end ---


@asynccontextmanager
async def raw_server(
    reply: Callable[[asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """A one-shot HTTP/1.1 server on 127.0.0.1: reads the request, then ``reply(writer)``."""

    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            await reply(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:  # a silent or endless reply would outlive the test
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_endless_body_is_read_only_up_to_the_excerpt_limit() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"y" * 65536
        while True:  # until the client hangs up
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    async with raw_server(endless) as port:
        settings = make_settings(**LOOPBACK, response_excerpt_bytes=100, timeout_seconds=30.0)
        async with sender(settings) as s:
            started = time.monotonic()
            outcome = await s.send(f"http://127.0.0.1:{port}/hook", HEADERS, BODY)
            elapsed = time.monotonic() - started

    assert outcome.status_code == 500
    assert outcome.excerpt == "y" * 100
    assert outcome.error is None  # the answer came; the rest was never wanted
    # It stopped at the limit: a reader of the whole body would be cut only by the deadline.
    assert elapsed < 30.0 / 5


async def test_trickling_body_is_cut_at_the_deadline_and_the_status_kept() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
        while True:
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with raw_server(trickle) as port:
        settings = make_settings(**LOOPBACK, timeout_seconds=0.3, connect_timeout_seconds=0.3)
        async with sender(settings) as s:
            started = time.monotonic()
            outcome = await s.send(f"http://127.0.0.1:{port}/hook", HEADERS, BODY)
            elapsed = time.monotonic() - started

    assert elapsed < 5 * 0.3
    assert outcome.ok  # the receiver answered 200 in time
    assert outcome.status_code == 200
    assert outcome.excerpt is not None
    assert 0 < len(outcome.excerpt) < 1024
    assert set(outcome.excerpt) == {"z"}


async def test_headers_that_never_come_time_out() -> None:
    async def silent(_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with raw_server(silent) as port:
        settings = make_settings(**LOOPBACK, timeout_seconds=0.3, connect_timeout_seconds=0.3)
        async with sender(settings) as s:
            started = time.monotonic()
            outcome = await s.send(f"http://127.0.0.1:{port}/hook", HEADERS, BODY)
            elapsed = time.monotonic() - started

    assert outcome.error == "timeout"
    assert elapsed < 5 * 0.3


# --- TLS: the connection goes to the checked IP, SNI and verification use the URL's host ---


def _certificate(name: str, directory: Path) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file = directory / f"{name}.crt"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, cert_pem.decode()


@dataclass
class TlsServer:
    port: int
    client_context: ssl.SSLContext  # trusts the server's certificate, and nothing else
    sni_seen: list[str | None]  # the server name each client handshake asked for


@asynccontextmanager
async def tls_server(certificate_name: str, directory: Path) -> AsyncIterator[TlsServer]:
    """An https server on 127.0.0.1 with a self-signed certificate for ``certificate_name``."""
    cert_file, key_file, pem = _certificate(certificate_name, directory)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    sni_seen: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni_seen.append(name)

    server_context.sni_callback = record_sni

    async def ok(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure")
        await writer.drain()

    async with raw_server(ok, ssl_context=server_context) as port:
        yield TlsServer(port, ssl.create_default_context(cadata=pem), sni_seen)


async def test_tls_uses_the_url_host_for_sni_and_verification_while_connecting_to_the_ip(
    tmp_path: Path,
) -> None:
    async with tls_server("localhost", tmp_path) as tls:
        resolver = FakeResolver({"localhost": ["127.0.0.1"]})
        connector = RecordingConnector({("127.0.0.1", tls.port): ("127.0.0.1", tls.port)})
        async with sender(
            make_settings(allow_private_targets=True),
            resolver=resolver,
            connector=connector,
            ssl_context=tls.client_context,
        ) as s:
            outcome = await s.send(f"https://localhost:{tls.port}/hook", HEADERS, BODY)

    assert outcome.ok, outcome
    assert outcome.excerpt == "secure"
    # Connected to the IP, and the certificate (naming localhost only) was verified.
    assert connector.hosts == [("127.0.0.1", tls.port)]
    assert tls.sni_seen == ["localhost"]


async def test_tls_certificate_for_another_name_fails_verification(tmp_path: Path) -> None:
    async with tls_server("other.example", tmp_path) as tls:
        resolver = FakeResolver({"localhost": ["127.0.0.1"]})
        async with sender(
            make_settings(allow_private_targets=True),
            resolver=resolver,
            ssl_context=tls.client_context,
        ) as s:
            outcome = await s.send(f"https://localhost:{tls.port}/hook", HEADERS, BODY)

    assert not outcome.ok
    assert outcome.status_code is None
    assert outcome.error == "tls_error"
    assert tls.sni_seen == ["localhost"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("8.8.8.8", None),
        ("127.0.0.1", "loopback address"),
        ("::1", "loopback address"),
        ("10.1.2.3", "private address"),
        ("172.16.0.1", "private address"),
        ("192.168.1.1", "private address"),
        ("100.64.0.1", "private address"),
        ("fc00::1", "private address"),
        ("fd12:3456::1", "private address"),
        ("fec0::1", "private address"),
        ("feff:ffff::1", "private address"),
        ("169.254.169.254", "cloud metadata address"),
        ("fd00:ec2::254", "cloud metadata address"),
        ("100.100.100.200", "cloud metadata address"),
        ("169.254.1.1", "link-local address"),
        ("fe80::1", "link-local address"),
        ("fe80::1%eth0", "link-local address"),
        ("224.0.0.1", "multicast address"),
        ("ff02::1", "multicast address"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("::ffff:10.0.0.1", "private address"),
        ("::ffff:127.0.0.1", "loopback address"),
        ("2002:a00:1::", "private address"),  # 6to4 of 10.0.0.1
        ("240.0.0.1", "private address"),
        ("192.0.2.1", "private address"),  # TEST-NET-1: documentation only
    ],
)
def test_forbidden_over_a_table_of_addresses(address: str, reason: str | None) -> None:
    assert forbidden(address) == reason
