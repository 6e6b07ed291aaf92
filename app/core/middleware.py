"""Pure-ASGI middleware: request ids, access logs, Prometheus metrics, last-resort 500s."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from prometheus_client import Counter, Histogram
from starlette.requests import Request
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
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_EXTRA_HEADERS = "extra_response_headers"


def add_response_headers(request: Request, headers: dict[str, str]) -> None:
    """Headers for whatever response this request ends with (success or error)."""
    extra = request.scope.setdefault("state", {}).setdefault(_EXTRA_HEADERS, [])
    extra.extend((name.lower().encode(), value.encode()) for name, value in headers.items())


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=scope["path"]
        )
        status = 500
        started = False
        begin = time.perf_counter()

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
            await self.app(scope, receive, send_wrapper)
        except Exception:
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
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(elapsed)
            log.info("request_finished", status=status, duration_ms=round(elapsed * 1000, 2))
