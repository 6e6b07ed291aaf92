"""The metering lane: the four hot routes served beside FastAPI's router, not through it.

Measured in-process on a ``POST /v1/check``, FastAPI's middleware stack and router cost about
a third of the request's CPU (each request walks every included router's routes twice, and
passes seven middleware layers and two exit stacks). A well-formed request to one of the
metering routes (start, complete, one-shot usage, check) takes this lane instead: the same
request-context middleware (request id, access log, metrics, last-resort 500), the same
route handler (``TransactionalRoute``: auth, idempotency, one transaction, the direct
endpoint call) and the same exception handlers, without the layers between them.

Only requests whose answer cannot differ take it: a POST to one of those paths with a JSON
content type, its whole body in one message within the body limit, that parses and
validates against the route's body model. Anything else (a malformed or oversized body, a
chunked upload, a body that fails validation) goes to the FastAPI app untouched, which
answers it as it always has; nothing has been done for it yet but reading the body, which
is handed on. With FastAPI's own body limit or its native telemetry turned on, there is no
lane at all.

In the lane, start, complete, one-shot usage and check first try their fast path
(app/transactions/fast.py: one unlocked read, then one self-committing call); it answers, or
hands the request to the route handler untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.http import DecimalRequest
from app.core.middleware import RequestContextMiddleware, replay
from app.routing import TransactionalRoute, is_json, unstorable
from app.transactions import fast

# The metering routes, by path template.
LANE_PATHS = frozenset(
    {
        "/v1/transactions/start",
        "/v1/transactions/{transaction_id}/complete",
        "/v1/usage",
        "/v1/check",
    }
)
_Handler = Callable[[Request], Awaitable[Response]]


_Fast = Callable[[Request, TransactionalRoute, Any], Awaitable[Response | None]]


async def _fast_start(request: Request, route: TransactionalRoute, body: Any) -> Response | None:
    return await fast.start(request, route, body)


async def _fast_complete(request: Request, route: TransactionalRoute, body: Any) -> Response | None:
    return await fast.complete(request, route, request.path_params["transaction_id"], body)


async def _fast_usage(request: Request, route: TransactionalRoute, body: Any) -> Response | None:
    return await fast.usage(request, route, body)


async def _fast_check(request: Request, route: TransactionalRoute, body: Any) -> Response | None:
    return await fast.check(request, route, body)


# The routes with a fast path (app/transactions/fast.py): tried first, None = the handler.
_FAST: dict[str, _Fast] = {
    "/v1/transactions/start": _fast_start,
    "/v1/transactions/{transaction_id}/complete": _fast_complete,
    "/v1/usage": _fast_usage,
    "/v1/check": _fast_check,
}


@dataclass(frozen=True)
class _Entry:
    route: TransactionalRoute
    model: type[BaseModel]
    handler: _Handler
    fast: _Fast | None = None


class Lane:
    """The lane of one app: its routes, found once the app is complete (first request)."""

    def __init__(self, app: FastAPI, entries: list[_Entry], max_body_bytes: int) -> None:
        self.app = app
        self.static = {e.route.path: e for e in entries if "{" not in e.route.path}
        self.templated = [e for e in entries if "{" in e.route.path]
        self.max_body_bytes = max_body_bytes
        self.serve = RequestContextMiddleware(self._serve)

    def entry(self, scope: Scope) -> tuple[_Entry, dict[str, Any]] | None:
        """The lane route this request is for (with its path parameters), else None."""
        path: str = scope["path"]
        found = self.static.get(path)
        if found is not None:
            return found, {}
        if not path.startswith("/v1/transactions/"):
            return None
        for entry in self.templated:
            match, child = StarletteRoute.matches(entry.route, scope)
            if match is Match.FULL:
                return entry, child["path_params"]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, full: ASGIApp) -> bool:
        """Serve the request and return True: in the lane, or (a body it does not take) by
        ``full``, given what was read of the body. False: not for the lane, nothing read."""
        found = self.entry(scope)
        if found is None:
            return False
        entry, path_params = found
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-length" and not (
                value.isdigit() and int(value) <= self.max_body_bytes
            ):
                return False
            if name == b"content-type" and not content_type:  # the first, as Starlette reads
                content_type = value.decode("latin-1")
        if not is_json(content_type):
            return False
        read: list[Message] = []
        size = 0
        while True:  # the whole body, counted as it comes (a client may send it in chunks)
            message = await receive()
            read.append(message)
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or size > self.max_body_bytes:
                await full(scope, replay(read[::-1], receive), send)  # the app's 413 or 499
                return True
            if not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in read)
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        request = DecimalRequest(scope)
        request._body = body
        try:
            validated = entry.model.model_validate(await request.json())
        except Exception:  # malformed or invalid: FastAPI's own answer, word for word
            await full(scope, replay([whole], receive), send)
            return True
        scope["app"] = self.app
        scope["router"] = self.app.router
        scope["route"] = entry.route
        scope["endpoint"] = entry.route.endpoint
        scope["path_params"] = path_params
        scope[_PARSED] = (request._body, request._json, validated, entry)
        await self.serve(scope, replay([whole], receive), send)
        return True

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, parsed, validated, entry = scope.pop(_PARSED)
        request = DecimalRequest(scope, receive, send)
        request._body, request._json, request.validated = body, parsed, validated
        try:
            response = None
            if entry.fast is not None and not unstorable(scope):
                response = await entry.fast(request, entry.route, validated)
            if response is None:
                response = await entry.handler(request)
        except Exception as exc:
            handler = _exception_handler(self.app, exc)
            if handler is None:
                raise  # the request context's last-resort 500, as in the app
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


_PARSED = "creditd.lane"


def _exception_handler(
    app: FastAPI, exc: Exception
) -> Callable[[Request, Any], Response | Awaitable[Response]] | None:
    """The app's handler for ``exc`` (by its class, most specific first), as Starlette's
    exception middleware finds it; the 500 handler is not one of them."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None and cls is not Exception:
            return handler
    return None


def _routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every route of the app, through included routers."""
    found: list[BaseRoute] = []
    for route in routes:
        found.append(route)
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is None:
            inner = getattr(route, "routes", None)
        if inner:
            found.extend(_routes(list(inner)))
    return found


def build(app: FastAPI, max_body_bytes: int, *, fast: bool = True) -> Lane | None:
    """The app's lane, or None when the app runs layers the lane would skip. ``fast``: the
    metering routes try their fast path first (app/transactions/fast.py)."""
    if getattr(app, "max_body_size", None) is not None:
        return None
    telemetry = getattr(app, "_native_telemetry", None)
    if telemetry is not None and telemetry.enabled():
        return None
    entries: list[_Entry] = []
    for route in _routes(list(app.router.routes)):
        if (
            isinstance(route, TransactionalRoute)
            and route.path in LANE_PATHS
            and route.methods == {"POST"}
            and route.lane_handler is not None
            and route.body_model is not None
        ):
            quick = _FAST.get(route.path) if fast else None
            entries.append(_Entry(route, route.body_model, route.lane_handler, quick))
    return Lane(app, entries, max_body_bytes)


class CreditdAPI(FastAPI):
    """FastAPI with the metering lane beside its router."""

    lane_max_body_bytes: int = 0
    fast_metering: bool = True
    _lane: Lane | None = None
    _lane_built = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if not self._lane_built:
                self._lane = build(self, self.lane_max_body_bytes, fast=self.fast_metering)
                self._lane_built = True
            lane = self._lane
            if lane is not None and await lane(scope, receive, send, super().__call__):
                return
        await super().__call__(scope, receive, send)
