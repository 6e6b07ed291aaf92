"""``CreditdMiddleware``: a pure ASGI middleware (FastAPI, Starlette or any ASGI 3 app; no
framework dependency) that runs every matching HTTP request inside a creditd usage transaction.

For a matching request: resolve the user (``resolve_user`` of the ASGI scope, or the
``user_header`` a trusted proxy sets; one of the two is required), start a transaction (hold the
provisional usage) and

* not admitted → answer ``402`` ``application/problem+json`` (``code`` = the server's reason:
  ``insufficient_credits``, ``spend_cap_reached``, ``concurrency_limit``) without calling the app;
* admitted → call the app with the transaction current (:func:`~creditd_sdk.add_usage`,
  :func:`~creditd_sdk.add_llm_usage`, :func:`~creditd_sdk.current_transaction`), and when the
  response's last body message has been handed to the server (a streaming body: after its last
  chunk) complete it with the usage reported (see :mod:`creditd_sdk.capture`);
* the app answers a status ``is_failure`` accepts (default 5xx), or raises (or is cancelled)
  before its response started → ``success: false``: the hold is released, nothing is charged;
* the app raises (or is cancelled) after a non-failure response started (a stream breaking
  mid-way) → ``success: true`` with the usage reported so far: the client received content and
  that usage happened.

Charging never raises out of the middleware: what could not be charged is in the capture's
``errors`` (and logged).

creditd unreachable at start (connection error, timeout, 429 or 5xx after the client's retries):
``on_unavailable="fail_closed"`` (default) answers ``503`` problem+json with ``Retry-After``;
``"fail_open"`` serves the request without a hold and charges its usage afterwards with one-shot
``POST /v1/usage`` calls, if creditd answers by then.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from creditd_sdk import _json
from creditd_sdk._async_client import AsyncCreditd
from creditd_sdk.capture import (
    UNAVAILABLE,
    OnUnavailable,
    RequestCapture,
    UnreportedUsage,
    bind,
    close_async,
    open_async,
    spawn,
    unbind,
)
from creditd_sdk.models import Tokens

log = logging.getLogger("creditd_sdk.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# An option given as a value, or computed from the request's ASGI scope (sync or async).
ScopeFn = Callable[[Scope], Any]

_TITLES = {
    "insufficient_credits": "Insufficient credits",
    "spend_cap_reached": "Spend cap reached",
    "concurrency_limit": "Too many requests in progress",
}


def _under(path: str, prefix: str) -> bool:
    base = prefix.rstrip("/")
    return base in ("", path) or path.startswith(base + "/")


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


async def _resolve(option: Any, arg: Any) -> Any:
    """``option`` itself, or ``option(arg)`` awaited if it is awaitable."""
    if not callable(option):
        return option
    value = option(arg)
    if inspect.isawaitable(value):
        value = await value
    return value


def _default_is_failure(status: int) -> bool:
    return status >= 500


class CreditdMiddleware:
    """Meter each matching request with a creditd usage transaction (see the module docstring).

    ``app.add_middleware(CreditdMiddleware, client=AsyncCreditd(...), model="gpt-4o", ...)``.

    Matching: the path is under one of ``path_prefixes`` (``"/"``: every path) and not under one
    of ``skip_paths``, the method is not in ``skip_methods``, and ``match(scope)`` (if given) is
    true. Only ``http`` scopes are metered (websocket and lifespan pass through).

    User: ``resolve_user(scope)`` (sync or async), or the ``user_header`` header; exactly one of
    the two must be given. Prefer ``resolve_user`` reading the user from the app's own
    authentication: a header names the user to charge, so it may only be used when trusted
    infrastructure (an auth proxy or gateway) sets it and strips any value the client sent —
    otherwise any client can charge another user's credits. No user → ``401`` problem+json
    ``user_not_identified`` without calling the app.

    ``model``, ``provisional_tokens``, ``feature_identifier``, ``team_id`` and ``metadata`` are
    values or (sync or async) functions of the scope; ``team_id`` is sent only when it is set.
    ``on_complete(capture)`` (sync or async) runs after each metered request has been charged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncCreditd,
        model: str | ScopeFn,
        path_prefixes: Sequence[str] = ("/",),
        skip_paths: Sequence[str] = (),
        skip_methods: Sequence[str] = ("OPTIONS",),
        match: Callable[[Scope], bool] | None = None,
        user_header: str | None = None,
        resolve_user: ScopeFn | None = None,
        provisional_tokens: Tokens | ScopeFn | None = None,
        feature_identifier: str | ScopeFn | None = None,
        team_id: str | ScopeFn | None = None,
        metadata: Mapping[str, Any] | ScopeFn | None = None,
        hold_ttl_seconds: int | None = None,
        unreported_usage: UnreportedUsage = "none",
        on_unavailable: OnUnavailable = "fail_closed",
        retry_after_seconds: int = 5,
        is_failure: Callable[[int], bool] = _default_is_failure,
        on_complete: Callable[[RequestCapture], Any] | None = None,
    ) -> None:
        if on_unavailable not in ("fail_open", "fail_closed"):
            raise ValueError("on_unavailable must be 'fail_open' or 'fail_closed'")
        if unreported_usage not in ("none", "provisional"):
            raise ValueError("unreported_usage must be 'none' or 'provisional'")
        if resolve_user is None and user_header is None:
            raise TypeError(
                "CreditdMiddleware needs to know whose credits a request spends: pass "
                "resolve_user=<function of the ASGI scope> (recommended: read the user from the "
                "app's own authentication), or user_header=<name> only if a trusted proxy or "
                "gateway sets that header and strips any value the client sent"
            )
        if resolve_user is not None and user_header is not None:
            raise TypeError("CreditdMiddleware takes resolve_user or user_header, not both")
        if user_header is not None and not user_header.strip():
            raise ValueError("user_header must be a header name")
        self.app = app
        self.client = client
        self.model = model
        self.path_prefixes = tuple(path_prefixes)
        self.skip_paths = tuple(skip_paths)
        self.skip_methods = frozenset(m.upper() for m in skip_methods)
        self.match = match
        self.user_header = user_header
        self.resolve_user = resolve_user
        self.provisional_tokens = provisional_tokens
        self.feature_identifier = feature_identifier
        self.team_id = team_id
        self.metadata = metadata
        self.hold_ttl_seconds = hold_ttl_seconds
        self.unreported_usage: UnreportedUsage = unreported_usage
        self.on_unavailable: OnUnavailable = on_unavailable
        self.retry_after_seconds = retry_after_seconds
        self.is_failure = is_failure
        self.on_complete = on_complete

    def matches(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        path: str = scope.get("path", "")
        if not any(_under(path, p) for p in self.path_prefixes):
            return False
        if any(_under(path, p) for p in self.skip_paths):
            return False
        if str(scope.get("method", "")).upper() in self.skip_methods:
            return False
        return self.match is None or self.match(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.matches(scope):
            await self.app(scope, receive, send)
            return
        if self.resolve_user is not None:
            user = await _resolve(self.resolve_user, scope)
            source = "resolve_user"
        else:
            assert self.user_header is not None
            user = _header(scope, self.user_header)
            source = f"header {self.user_header}"
        if not user:
            detail = f"no user for this request ({source})"
            await _problem(send, 401, "user_not_identified", "User not identified", detail)
            return
        capture = RequestCapture(
            user_id=str(user),
            model=await _resolve(self.model, scope),
            team_id=await _resolve(self.team_id, scope),
            feature_identifier=await _resolve(self.feature_identifier, scope),
        )
        provisional: Tokens | None = await _resolve(self.provisional_tokens, scope)
        try:
            await open_async(
                self.client,
                capture,
                provisional_tokens=provisional,
                metadata=await _resolve(self.metadata, scope),
                hold_ttl_seconds=self.hold_ttl_seconds,
                on_unavailable=self.on_unavailable,
            )
        except UNAVAILABLE as exc:
            headers = [(b"retry-after", str(self.retry_after_seconds).encode())]
            detail = f"the credit service is unreachable: {exc.message}"
            await _problem(send, 503, "credits_unavailable", "Credits unavailable", detail, headers)
            return
        start = capture.start
        if start is not None and not start.admitted:
            reason = start.reason or "insufficient_credits"
            extra = {"transaction_id": start.transaction_id, "balance": start.balance}
            title = _TITLES.get(reason, "Not admitted")
            await _problem(send, 402, reason, title, start.message, extra=extra)
            return
        await self._run(scope, receive, send, capture, provisional)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        capture: RequestCapture,
        provisional: Tokens | None,
    ) -> None:
        completion: asyncio.Task[None] | None = None
        started = False  # an http.response.start has been handed to the server

        async def finish(success: bool) -> None:
            try:
                await close_async(
                    self.client,
                    capture,
                    success=success,
                    unreported_usage=self.unreported_usage,
                    provisional_tokens=provisional,
                )
            except Exception:  # close_async records its errors; never raise from here anyway
                log.exception("creditd: charging the request failed")
            if self.on_complete is not None:
                try:
                    await _resolve(self.on_complete, capture)
                except Exception:
                    log.exception("creditd: on_complete failed")

        def succeeded() -> bool:
            """A response started with a non-failure status: the request is charged."""
            status = capture.status_code
            return started and status is not None and not self.is_failure(status)

        async def send_wrapper(message: Message) -> None:
            nonlocal completion, started
            kind = message["type"]
            if kind == "http.response.start":
                capture.status_code = int(message["status"])
            await send(message)
            if kind == "http.response.start":
                started = True
            last = (kind == "http.response.body" and not message.get("more_body", False)) or (
                kind == "http.response.pathsend"
            )
            if last and completion is None:
                # The whole response is with the server: charge it now, in a task of its own.
                # Not inline: the app's own cancel scopes (a StreamingResponse cancels its task
                # group once the client is done) would cancel the completion half-way.
                completion = spawn(finish(succeeded()))

        token = bind(capture)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if completion is None:
                # Nothing sent yet (or a failure status): released. A response already going
                # out (a stream broken mid-way): the client got content and the usage reported
                # so far happened, so it is charged.
                completion = spawn(finish(succeeded()))
            await asyncio.shield(completion)
            raise
        except BaseException:
            if completion is None:
                # Cancelled (client gone, shutdown): the completion runs on in its own task,
                # by the same rule.
                spawn(finish(succeeded()))
            raise
        else:
            if completion is None:
                # The app returned without ending a response (e.g. the client disconnected
                # mid-stream): the usage reported happened, so it is charged.
                completion = spawn(finish(succeeded()))
            # Wait for the charge (not for the client: the response is already sent), so a
            # server shutting down gracefully lets it finish.
            await asyncio.shield(completion)
        finally:
            unbind(token)


async def _problem(
    send: Send,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> None:
    body: dict[str, Any] = {
        "type": f"/errors/{code}",
        "code": code,
        "title": title,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    content = _json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(content)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content, "more_body": False})
