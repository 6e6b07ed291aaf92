"""Pure-ASGI middleware: request ids, access logs, Prometheus metrics, last-resort 500s, and
the request-body limit.

A client that hangs up mid-request is logged as ``client_disconnected`` and counted with
status 499, never as an error or a 500.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge
from app.core.http import ProblemResponse, problem_body, problem_from_error

log = structlog.get_logger("creditd.http")

REQUESTS = Counter("creditd_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "creditd_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CLIENT_CLOSED_REQUEST = 499
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_EXTRA_HEADERS = "extra_response_headers"


def add_response_headers(request: Request, headers: dict[str, str]) -> None:
    """Headers for whatever response this request ends with (success or error)."""
    extra = request.scope.setdefault("state", {}).setdefault(_EXTRA_HEADERS, [])
    extra.extend((name.lower().encode(), value.encode()) for name, value in headers.items())


_ACCESS_LOG = logging.getLogger("creditd.http")
# The labelled children of the two request metrics, by (method, route, status): `labels()`
# validates and locks on every call, which costs a metering request more than its JSON.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _count(method: str, route: str, status: int, elapsed: float) -> None:
    key = (method, route, status)
    children = _CHILDREN.get(key)
    if children is None:
        children = (
            REQUESTS.labels(method, route, str(status)),
            LATENCY.labels(method, route),
        )
        _CHILDREN[key] = children
    children[0].inc()
    children[1].observe(elapsed)


def _new_request_id() -> str:
    """32 random hex digits, like a uuid4's: a correlation id, not a secret, so the fast
    generator will do (uuid4 asks the kernel for randomness on every request)."""
    return f"{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else _new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=scope["path"]
        )
        status = 500
        started = False
        disconnected = False
        begin = time.perf_counter()

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(state.get(_EXTRA_HEADERS, ()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            disconnected = True  # nobody is left to answer
        except Exception:
            if disconnected:
                # The client hung up mid-request and what failed was reading from it.
                log.info("client_disconnected_error", exc_info=True)
                return
            log.exception("unhandled_error")
            if started:
                raise
            body = problem_body(
                Request(scope),
                slug="internal_error",
                title="Internal server error",
                status=500,
                detail="An unexpected error occurred; quote the request id when reporting it.",
            )
            await ProblemResponse(body, status_code=500)(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - begin
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            if disconnected:
                # Whatever the app answered went nowhere: 499, nginx's "client closed request".
                status = CLIENT_CLOSED_REQUEST
                log.info("client_disconnected", duration_ms=round(elapsed * 1000, 2))
            _count(scope["method"], template, status, elapsed)
            if _ACCESS_LOG.isEnabledFor(logging.INFO):  # structlog would build the event first
                log.info("request_finished", status=status, duration_ms=round(elapsed * 1000, 2))


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before the app sees the request.

    A declared ``Content-Length`` over the limit is refused before a byte of the body is read.
    Otherwise the body is read here, counting every chunk (a chunked body declares no length),
    and refused as soon as the count passes the limit, without reading the rest; a body within
    the limit is handed to the app whole. So nothing is parsed, authenticated or given a
    database connection for an oversized body, and a slow upload never holds a connection.

    The connection is not closed: the server discards the rest of the body as it arrives
    (uvicorn drops body bytes once the response is complete, it never buffers them). Closing
    with unread bytes would make the kernel reset the connection, and a client still sending
    would see a reset instead of its 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await self._refuse(scope, receive, send)
                    return
                break
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            # The common case: the whole body in one message, handed on as it came.
            if len(message.get("body", b"")) > limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, _Replay([message], receive), send)
            return
        chunks: list[bytes] = []
        size = 0
        while message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = await receive()
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        if message["type"] != "http.request":
            # The client went away mid-body: the app sees the body so far, then the disconnect.
            body["more_body"] = True
            await self.app(scope, _Replay([message, body], receive), send)
            return
        await self.app(scope, _Replay([body], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"The request body exceeds the limit of {self.max_bytes} bytes.")
        await problem_from_error(Request(scope), error)(scope, receive, send)


def replay(pending: list[Message], receive: Receive) -> Receive:
    """A receive that hands out ``pending`` (last item first), then defers to ``receive``:
    for messages already read from the server."""
    return _Replay(pending, receive)


class _Replay:
    """A receive that hands out ``pending`` (last item first), then defers to the server's."""

    __slots__ = ("pending", "receive")

    def __init__(self, pending: list[Message], receive: Receive) -> None:
        self.pending = pending
        self.receive = receive

    async def __call__(self) -> Message:
        if self.pending:
            return self.pending.pop()
        return await self.receive()
