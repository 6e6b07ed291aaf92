"""Pure-ASGI middleware: request ids, access logs, Prometheus metrics, last-resort 500s.

A client that hangs up mid-request is logged as ``client_disconnected`` and counted with
status 499, never as an error or a 500.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.http import ProblemResponse, problem_body

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


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
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
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(elapsed)
            log.info("request_finished", status=status, duration_ms=round(elapsed * 1000, 2))
