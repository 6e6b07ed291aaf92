"""Request-scoped usage capture: one usage transaction per request (ASGI middleware) or per call
(``metered`` decorator), and the contextvars API the code inside reports its usage through.

Inside a captured request or call::

    from creditd_sdk import add_llm_usage, add_usage, current_transaction

    add_usage(input_tokens=812, output_tokens=230)  # the transaction's own model
    add_llm_usage("text-embedding-3-small", input_tokens=4000, provider="openai")  # another model

What is charged when the request or call ends:

* success → the transaction is completed with the usage reported for its model, summed
  (nothing reported: ``unreported_usage="none"`` charges zero tokens, i.e. the model's request
  price only; ``"provisional"`` charges the provisional tokens);
* usage reported for *another* model is charged after that, one ``POST /v1/usage`` per model,
  with an Idempotency-Key derived from the transaction id and the model (a retry never charges
  twice; a model id outside ``[A-Za-z0-9._:-]{1,64}`` is put in the key as a hash of it); its
  metadata carries ``capture_transaction_id`` to tie it to the request;
* failure → ``success: false``: the hold is released and nothing is charged, reported usage
  included. A failure is the call raising (``@metered``), or for a request (the middleware): an
  answer with a failure status (``is_failure``, default 5xx), or the app raising or being
  cancelled *before* its response started. Once a response has started with a non-failure
  status, the client is receiving content and the usage reported happened: an exception or a
  cancellation after that (a stream breaking mid-way) completes with ``success: true`` and the
  usage reported so far.

Charging never raises out of a capture's end: what could not be charged is in
``RequestCapture.errors`` (and logged).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, Literal, ParamSpec, TypeVar, cast

from creditd_sdk._async_client import AsyncCreditd
from creditd_sdk._sync_client import Creditd
from creditd_sdk.errors import (
    APIConnectionError,
    CompletionSpooled,
    CreditdError,
    RateLimited,
    ServerError,
    not_admitted,
)
from creditd_sdk.models import CompleteResult, StartResult, Tokens, UsageResult, parse

log = logging.getLogger("creditd_sdk.capture")

P = ParamSpec("P")
R = TypeVar("R")

Metric = int | Decimal
UnreportedUsage = Literal["none", "provisional"]
OnUnavailable = Literal["fail_open", "fail_closed"]

# Errors meaning "creditd could not be reached or could not answer" (after the client's retries):
# these follow ``on_unavailable``; any other error (401, 403, 404, 422 ...) is a configuration or
# input problem and is raised.
UNAVAILABLE = (APIConnectionError, ServerError, RateLimited)

_KEY_PREFIX = "creditd-capture"
_current: ContextVar[RequestCapture | None] = ContextVar("creditd_request_capture", default=None)


class NoActiveCapture(CreditdError):
    """``add_usage``/``add_llm_usage`` outside a captured request or call (or after it ended)."""


def _check_metric(name: str, value: object) -> Metric:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise TypeError(f"usage metric {name} must be an int (or a Decimal), got {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"usage metric {name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"usage metric {name} must be >= 0, got {value!r}")
    return value


_KEY_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _key_part(model: str) -> str:
    """A model id as part of an Idempotency-Key: the id itself when it is short and plain ASCII
    (HTTP header values must be ASCII: httpx refuses anything else), else a hash of it. Both are
    stable, so a retry reuses the key; ``=`` is never in a plain id, so a hash never equals one."""
    if _KEY_SAFE.fullmatch(model):
        return model
    return "sha256=" + hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RequestCapture:
    """The usage transaction of one captured request or call, and the usage reported in it.

    ``start`` is the start response (``None`` when running fail-open: then ``unavailable`` is the
    error that made creditd unreachable). After the end: ``success``, ``result`` (the completion;
    ``spooled`` when it waits in the client's spool instead), ``charges`` (the one-shot charges
    of other models, by model) and ``errors`` (what could not be charged, also logged: a
    :class:`~creditd_sdk.errors.CreditdError`, or any other exception charging raised).
    """

    def __init__(
        self,
        *,
        user_id: str,
        model: str,
        team_id: str | None = None,
        feature_identifier: str | None = None,
    ) -> None:
        self.user_id = user_id
        self.model = model
        self.team_id = team_id
        self.feature_identifier = feature_identifier
        self.request_key = uuid.uuid4().hex
        self.start: StartResult | None = None
        self.unavailable: CreditdError | None = None
        self.status_code: int | None = None  # the HTTP status answered (middleware only)
        self.success: bool | None = None
        self.result: CompleteResult | None = None
        self.spooled: CompletionSpooled | None = None
        self.charges: dict[str, UsageResult] = {}
        self.errors: list[Exception] = []
        self._usage: dict[str, dict[str, Metric]] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self._closed = False

    # --- state --------------------------------------------------------------------------------

    @property
    def transaction_id(self) -> str | None:
        return None if self.start is None else self.start.transaction_id

    @property
    def admitted(self) -> bool:
        return self.start is not None and self.start.admitted

    @property
    def closed(self) -> bool:
        """Whether the request or call has ended (its usage was charged or released)."""
        return self._closed

    def usage(self, model: str | None = None) -> dict[str, Metric]:
        """The usage reported so far for ``model`` (default: the transaction's), summed."""
        return dict(self._usage.get(model or self.model, {}))

    @property
    def models(self) -> list[str]:
        """Every model usage was reported for, the transaction's first."""
        return sorted(self._usage, key=lambda m: (m != self.model, m))

    # --- reporting ----------------------------------------------------------------------------

    def add_usage(
        self,
        *,
        model: str | None = None,
        provider: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        **metrics: Metric,
    ) -> None:
        """Add usage of ``model`` (default: the transaction's); metrics are summed per model."""
        self._add(model, provider, metadata, metrics)

    def _add(
        self,
        model: str | None,
        provider: str | None,
        metadata: Mapping[str, Any] | None,
        metrics: Mapping[str, object],
    ) -> None:
        if self._closed:
            raise NoActiveCapture(
                "this request's usage was already charged: report usage before the response ends"
            )
        name = model or self.model
        checked = {k: _check_metric(k, v) for k, v in metrics.items()}
        totals = self._usage.setdefault(name, {})
        for key, value in checked.items():
            if value:  # zeros are not sent: a metric this server does not know stays out
                totals[key] = totals.get(key, 0) + value
        meta = self._metadata.setdefault(name, {})
        if provider is not None:
            meta["provider"] = provider
        if metadata:
            meta.update(metadata)

    # --- what to send -------------------------------------------------------------------------

    def _start_body(
        self,
        provisional_tokens: Tokens | None,
        metadata: Mapping[str, Any] | None,
        hold_ttl_seconds: int | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": self.user_id, "model": self.model}
        optional = {
            "provisional_tokens": None if provisional_tokens is None else dict(provisional_tokens),
            "feature_identifier": self.feature_identifier,
            "metadata": None if metadata is None else dict(metadata),
            "hold_ttl_seconds": hold_ttl_seconds,
            "team_id": self.team_id,  # only when configured: older servers do not know it
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def _start_key(self) -> str:
        # Never derived from anything the HTTP client sent (X-Request-Id ...): a replayed start
        # would hand a second request the first one's transaction.
        return f"{_KEY_PREFIX}:{self.request_key}:start"

    def _complete_args(self, success: bool, unreported: UnreportedUsage) -> dict[str, Any]:
        assert self.start is not None
        args: dict[str, Any] = {
            "success": success,
            "idempotency_key": f"{_KEY_PREFIX}:{self.start.transaction_id}:complete",
        }
        if success:
            if self.model in self._usage:
                args["finalized_tokens"] = dict(self._usage[self.model])
            elif unreported == "none":
                args["finalized_tokens"] = {}  # zero tokens: the model's request price only
            meta = self._metadata.get(self.model)
            if meta:
                args["metadata"] = meta
        return args

    def _one_shots(self, unreported: UnreportedUsage, provisional: Tokens | None) -> list[Any]:
        """(model, body, key) of each ``POST /v1/usage`` to send after a successful end."""
        anchor = self.transaction_id or self.request_key
        shots: list[Any] = []
        models = self.models
        if self.start is None and self.model not in self._usage:
            # Fail-open without a transaction: the transaction's model is charged as it would be.
            models = [self.model, *models]
        for model in models:
            if model == self.model and self.start is not None:
                continue  # charged by the completion
            tokens: Mapping[str, object] | None = self._usage.get(model)
            if tokens is None:
                tokens = {}
                if unreported == "provisional" and provisional:
                    tokens = cast(Mapping[str, object], provisional)
            meta = dict(self._metadata.get(model, {}))
            if self.transaction_id is not None:
                meta["capture_transaction_id"] = self.transaction_id
            body: dict[str, Any] = {"user_id": self.user_id, "model": model, "tokens": dict(tokens)}
            if self.feature_identifier is not None:
                body["feature_identifier"] = self.feature_identifier
            if meta:
                body["metadata"] = meta
            if self.team_id is not None:
                body["team_id"] = self.team_id
            key = f"{_KEY_PREFIX}:{anchor}:usage:{_key_part(model)}"
            shots.append((model, body, key))
        return shots

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors.append(exc)
        if isinstance(exc, CreditdError):
            log.error("creditd capture: %s for user %s failed: %s", what, self.user_id, exc.message)
        else:  # not an answer from creditd: a bug or an unexpected failure, with its traceback
            log.error(
                "creditd capture: %s for user %s failed: %r",
                what,
                self.user_id,
                exc,
                exc_info=exc,
            )


# --- the contextvars API ----------------------------------------------------------------------


def current_transaction() -> RequestCapture | None:
    """The captured request or call this code runs in (``None`` outside one)."""
    return _current.get()


def _require() -> RequestCapture:
    capture = _current.get()
    if capture is None:
        raise NoActiveCapture(
            "no creditd capture here: add_usage/add_llm_usage work inside a request captured "
            "by CreditdMiddleware or a @metered call"
        )
    return capture


def add_usage(
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
    metadata: Mapping[str, Any] | None = None,
    **metrics: Metric,
) -> None:
    """Report usage of the current transaction's model (summed; charged when the request ends).

    ``metrics`` takes any other usage metric the server prices (e.g. ``reasoning_tokens``);
    ``metadata`` is merged into the transaction's.
    """
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
    }
    _require()._add(None, None, metadata, {**counts, **metrics})


def add_llm_usage(
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
    *,
    provider: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    **metrics: Metric,
) -> None:
    """Report one model call's usage. The transaction's own model is charged by its completion;
    another model is charged with its own ``POST /v1/usage`` when the request ends.
    ``provider`` is recorded in that charge's metadata."""
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
    }
    _require()._add(model, provider, metadata, {**counts, **metrics})


# --- opening and closing a capture, async and sync --------------------------------------------


async def open_async(
    client: AsyncCreditd,
    capture: RequestCapture,
    *,
    provisional_tokens: Tokens | None,
    metadata: Mapping[str, Any] | None,
    hold_ttl_seconds: int | None,
    on_unavailable: OnUnavailable,
) -> None:
    """Start the transaction (``capture.start``); unreachable + fail-open → ``unavailable``."""
    body = capture._start_body(provisional_tokens, metadata, hold_ttl_seconds)
    try:
        data = await client.request(
            "POST", "/v1/transactions/start", body=body, idempotency_key=capture._start_key()
        )
    except UNAVAILABLE as exc:
        if on_unavailable == "fail_closed":
            raise
        log.warning("creditd unreachable, serving without a hold (fail open): %s", exc.message)
        capture.unavailable = exc
        return
    capture.start = parse(StartResult, data)


def open_sync(
    client: Creditd,
    capture: RequestCapture,
    *,
    provisional_tokens: Tokens | None,
    metadata: Mapping[str, Any] | None,
    hold_ttl_seconds: int | None,
    on_unavailable: OnUnavailable,
) -> None:
    body = capture._start_body(provisional_tokens, metadata, hold_ttl_seconds)
    try:
        data = client.request(
            "POST", "/v1/transactions/start", body=body, idempotency_key=capture._start_key()
        )
    except UNAVAILABLE as exc:
        if on_unavailable == "fail_closed":
            raise
        log.warning("creditd unreachable, serving without a hold (fail open): %s", exc.message)
        capture.unavailable = exc
        return
    capture.start = parse(StartResult, data)


async def close_async(
    client: AsyncCreditd,
    capture: RequestCapture,
    *,
    success: bool,
    unreported_usage: UnreportedUsage,
    provisional_tokens: Tokens | None,
) -> None:
    """Complete the transaction, then charge the other models' usage (on success). Never raises
    an ``Exception``: what fails is in ``capture.errors`` (and the log), and the calls after it
    are still made."""
    capture._closed = True
    capture.success = success
    if capture.start is not None:
        try:
            args = capture._complete_args(success, unreported_usage)
            capture.result = await client.transactions.complete(
                capture.start.transaction_id, **args
            )
        except CompletionSpooled as spooled:
            capture.spooled = spooled
        except Exception as exc:
            capture._failed("completion", exc)
    if not success:
        return
    try:
        shots = capture._one_shots(unreported_usage, provisional_tokens)
    except Exception as exc:
        capture._failed("charging the other models' usage", exc)
        return
    for model, body, key in shots:
        try:
            data = await client.request("POST", "/v1/usage", body=body, idempotency_key=key)
            capture.charges[model] = parse(UsageResult, data)
        except Exception as exc:
            capture._failed(f"charging the usage of {model!r}", exc)


def close_sync(
    client: Creditd,
    capture: RequestCapture,
    *,
    success: bool,
    unreported_usage: UnreportedUsage,
    provisional_tokens: Tokens | None,
) -> None:
    """The sync :func:`close_async`; never raises an ``Exception`` either."""
    capture._closed = True
    capture.success = success
    if capture.start is not None:
        try:
            args = capture._complete_args(success, unreported_usage)
            capture.result = client.transactions.complete(capture.start.transaction_id, **args)
        except CompletionSpooled as spooled:
            capture.spooled = spooled
        except Exception as exc:
            capture._failed("completion", exc)
    if not success:
        return
    try:
        shots = capture._one_shots(unreported_usage, provisional_tokens)
    except Exception as exc:
        capture._failed("charging the other models' usage", exc)
        return
    for model, body, key in shots:
        try:
            data = client.request("POST", "/v1/usage", body=body, idempotency_key=key)
            capture.charges[model] = parse(UsageResult, data)
        except Exception as exc:
            capture._failed(f"charging the usage of {model!r}", exc)


# Completions running in tasks of their own; kept referenced here until they finish.
_tasks: set[asyncio.Task[None]] = set()


def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run ``work`` in a task of its own: out of the caller's cancel scopes, so a cancelled
    request still releases its hold."""
    task = asyncio.get_running_loop().create_task(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def bind(capture: RequestCapture) -> Any:
    """Make ``capture`` the current one; returns the token for :func:`unbind`."""
    return _current.set(capture)


def unbind(token: Any) -> None:
    _current.reset(token)


# --- the decorator ----------------------------------------------------------------------------


def _value(option: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return option(*args, **kwargs) if callable(option) else option


class metered:
    """Meter every call of a function: start a transaction before it runs, complete it after
    with the usage the function reported through ``add_usage``/``add_llm_usage``.

    Works on sync functions (with a :class:`Creditd` client) and async ones (with an
    :class:`AsyncCreditd`). ``user_id``, ``model``, ``team_id``, ``provisional_tokens`` and
    ``metadata`` may be callables of the function's arguments. Not admitted → the function does
    not run and :class:`~creditd_sdk.errors.NotAdmitted` is raised (``InsufficientCredits`` when
    credits are short). The function raises → ``success: false`` (hold released) and the
    exception propagates. creditd unreachable → the error is raised (``fail_closed``, default)
    or the function runs without a hold and its usage is charged afterwards if creditd answers
    again (``fail_open``).

    Generator functions (sync or async) are refused with ``TypeError``: calling one only creates
    the generator, so the call would be charged before any of its work ran. Meter the function
    that consumes it, or use ``capture_usage`` around the iteration.
    """

    def __init__(
        self,
        client: Creditd | AsyncCreditd,
        *,
        user_id: str | Callable[..., str],
        model: str | Callable[..., str],
        provisional_tokens: Tokens | Callable[..., Tokens | None] | None = None,
        feature_identifier: str | None = None,
        team_id: str | Callable[..., str | None] | None = None,
        metadata: Mapping[str, Any] | Callable[..., Mapping[str, Any] | None] | None = None,
        hold_ttl_seconds: int | None = None,
        unreported_usage: UnreportedUsage = "none",
        on_unavailable: OnUnavailable = "fail_closed",
    ) -> None:
        self.client = client
        self.user_id = user_id
        self.model = model
        self.provisional_tokens = provisional_tokens
        self.feature_identifier = feature_identifier
        self.team_id = team_id
        self.metadata = metadata
        self.hold_ttl_seconds = hold_ttl_seconds
        self.unreported_usage: UnreportedUsage = unreported_usage
        self.on_unavailable: OnUnavailable = on_unavailable

    def _capture(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[RequestCapture, Tokens | None, Mapping[str, Any] | None]:
        capture = RequestCapture(
            user_id=_value(self.user_id, args, kwargs),
            model=_value(self.model, args, kwargs),
            team_id=_value(self.team_id, args, kwargs),
            feature_identifier=self.feature_identifier,
        )
        provisional = _value(self.provisional_tokens, args, kwargs)
        return capture, provisional, _value(self.metadata, args, kwargs)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            name = getattr(fn, "__qualname__", repr(fn))
            raise TypeError(
                f"@metered cannot meter the generator function {name}: calling it only "
                "creates the generator, so the call would be charged before the generator ran. "
                "Meter the function that consumes it, or wrap the iteration in capture_usage."
            )
        if inspect.iscoroutinefunction(fn):
            if not isinstance(self.client, AsyncCreditd):
                raise TypeError("@metered on an async function needs an AsyncCreditd client")
            return cast(Callable[P, R], self._wrap_async(self.client, fn))
        if not isinstance(self.client, Creditd):
            raise TypeError("@metered on a sync function needs a Creditd client")
        return self._wrap_sync(self.client, fn)

    def _wrap_async(
        self, client: AsyncCreditd, fn: Callable[P, Coroutine[Any, Any, Any]]
    ) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            capture, provisional, metadata = self._capture(args, kwargs)
            await open_async(
                client,
                capture,
                provisional_tokens=provisional,
                metadata=metadata,
                hold_ttl_seconds=self.hold_ttl_seconds,
                on_unavailable=self.on_unavailable,
            )
            if capture.start is not None and not capture.start.admitted:
                raise not_admitted(capture.start)
            token = bind(capture)

            def close(success: bool) -> Coroutine[Any, Any, None]:
                return close_async(
                    client,
                    capture,
                    success=success,
                    unreported_usage=self.unreported_usage,
                    provisional_tokens=provisional,
                )

            try:
                result = await fn(*args, **kwargs)
            except Exception:
                unbind(token)
                await close(False)
                raise
            except BaseException:
                unbind(token)
                spawn(close(False))  # cancelled: release the hold without waiting here
                raise
            unbind(token)
            await close(True)
            return result

        return wrapper

    def _wrap_sync(self, client: Creditd, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            capture, provisional, metadata = self._capture(args, kwargs)
            open_sync(
                client,
                capture,
                provisional_tokens=provisional,
                metadata=metadata,
                hold_ttl_seconds=self.hold_ttl_seconds,
                on_unavailable=self.on_unavailable,
            )
            if capture.start is not None and not capture.start.admitted:
                raise not_admitted(capture.start)
            token = bind(capture)
            success = False
            try:
                result = fn(*args, **kwargs)
                success = True
                return result
            finally:
                unbind(token)
                close_sync(
                    client,
                    capture,
                    success=success,
                    unreported_usage=self.unreported_usage,
                    provisional_tokens=provisional,
                )

        return wrapper
