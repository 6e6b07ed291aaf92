"""``AsyncCreditd``, the async client.

``_sync_client.py`` (``Creditd``) is generated from this file by ``scripts/unasync.py``: edit
this one, then run ``make sdk-sync`` (a test fails when the two drift apart).
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import Token
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

import httpx

from creditd_sdk import _json
from creditd_sdk._compat import AsyncLock, current, run_io_async, sleep_async
from creditd_sdk._json import to_amount
from creditd_sdk._retry import RetryPolicy, connection_error
from creditd_sdk._version import __version__
from creditd_sdk.errors import (
    APIConnectionError,
    APIStatusError,
    CompletionSpooled,
    CreditdError,
    Forbidden,
    IdempotencyKeyInFlight,
    RateLimited,
    ServerError,
    Unauthorized,
    from_response,
    not_admitted,
)
from creditd_sdk.models import (
    NOT_GIVEN,
    Amount,
    ApiKey,
    CapAction,
    CapPeriod,
    CheckResult,
    Claim,
    CompleteResult,
    Debit,
    Eligibility,
    Event,
    Grant,
    GrantCategory,
    GrantSource,
    GroupBy,
    Health,
    Job,
    LedgerEntry,
    Liability,
    MemberSpendCapIn,
    ModelOverride,
    ModelPrice,
    Page,
    Payment,
    PaymentProvider,
    PaymentStatus,
    Plan,
    PlanInterval,
    PriceEvaluation,
    PriceIn,
    Project,
    ProjectCreated,
    ProjectSettingsPatch,
    Promo,
    Provider,
    ProviderAccount,
    RedeliverResult,
    Redemption,
    RefillInterval,
    RefillMode,
    RefundResult,
    Scope,
    SpendCap,
    SpendReport,
    StartResult,
    Subscription,
    SubscriptionCreated,
    Summary,
    Team,
    TeamMember,
    TeamRole,
    Tier,
    Tokens,
    Transaction,
    TransactionStatus,
    UsageResult,
    User,
    WebhookAttempt,
    WebhookEndpoint,
    parse,
    parse_page,
)
from creditd_sdk.spool import FileSpool, FlushResult, Spool, SpoolEntry, spool_target

log = logging.getLogger("creditd_sdk")

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

DEFAULT_BASE_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 10.0
# Errors after which a completion waits in the spool: the server may come back.
_UNDELIVERED = (APIConnectionError, ServerError, RateLimited, IdempotencyKeyInFlight)
# Errors after which a spooled completion stays for later: they may clear without us.
_KEEP_SPOOLED = (*_UNDELIVERED, Unauthorized, Forbidden)
SpendCapList = list[SpendCap]
ProviderAccountList = list[ProviderAccount]


def _seg(value: str) -> str:
    """A path segment: every reserved character percent-encoded."""
    return quote(str(value), safe="")


def _amount(value: Any) -> Any:
    """An amount argument as Decimal; None and NOT_GIVEN pass through."""
    if value is None or value is NOT_GIVEN:
        return value
    return to_amount(value)


def _present(**fields: Any) -> dict[str, Any]:
    """A create body: the fields that were given (None means: not sent, the server default)."""
    return {k: v for k, v in fields.items() if v is not None and v is not NOT_GIVEN}


def _given(**fields: Any) -> dict[str, Any]:
    """An update body: the fields that were given; None is sent as null (clears the field)."""
    return {k: v for k, v in fields.items() if v is not NOT_GIVEN}


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (e.g. datetime.now(UTC))")
        return value.isoformat()
    if isinstance(value, Decimal):
        return _json.decimal_text(value)
    return str(value)


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: _query_value(v) for k, v in params.items() if v is not None}


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return _json.loads(response.content)
    except ValueError as exc:
        raise CreditdError(
            f"invalid JSON in a {response.status_code} response", status=response.status_code
        ) from exc


def _decode_error(response: httpx.Response) -> Any:
    try:
        return _json.loads(response.content) if response.content else None
    except ValueError:
        return None  # an HTML error page from a proxy, say


def _complete_path(transaction_id: str) -> str:
    return f"/v1/transactions/{_seg(transaction_id)}/complete"


def _token_dict(tokens: Mapping[str, object] | None) -> dict[str, object] | None:
    return None if tokens is None else dict(tokens)


class AsyncCreditd:
    """Async client for the creditd HTTP API.

    ``api_key`` defaults to ``$CREDITD_API_KEY`` and ``base_url`` to ``$CREDITD_BASE_URL`` (else
    http://localhost:8000). Every POST carries an ``Idempotency-Key`` (a uuid4 unless given),
    reused across that call's retries. Network errors, timeouts, 429, 502-504 and
    ``idempotency_key_in_flight`` are retried up to ``max_retries`` times with exponential
    backoff and jitter, honouring ``Retry-After``. Completions that still cannot be delivered
    wait in ``spool`` (a :class:`FileSpool` unless given; ``None`` disables it).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        spool: Spool | None = NOT_GIVEN,
        spool_dir: str | os.PathLike[str] | None = None,
        auto_flush_spool: bool = True,
        spool_flush_interval: float = 5.0,
        project_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("CREDITD_API_KEY")
        if not key:
            raise CreditdError("no API key: pass api_key= or set CREDITD_API_KEY")
        url = base_url or os.environ.get("CREDITD_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = url.rstrip("/")
        self._retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
        )
        all_headers = {
            "Authorization": f"Bearer {key}",
            "User-Agent": f"creditd-sdk-python/{__version__}",
            "Accept": "application/json",
            **(headers or {}),
        }
        if project_id is not None:
            all_headers["X-Project-Id"] = project_id
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._http.base_url = httpx.URL(self.base_url)
        self._http.headers.update(all_headers)
        self.spool: Spool | None = FileSpool(spool_dir) if spool is NOT_GIVEN else spool
        self._target = spool_target(self.base_url, key)
        self._auto_flush = auto_flush_spool
        self._flush_interval = spool_flush_interval
        self._spool_pending: bool | None = None  # unknown until the spool is first read
        self._next_auto_flush = 0.0
        self._flush_lock = AsyncLock()

        self.project = AsyncProjectResource(self)
        self.api_keys = AsyncApiKeys(self)
        self.models = AsyncModels(self)
        self.jobs = AsyncJobs(self)
        self.pricing = AsyncPricing(self)
        self.users = AsyncUsers(self)
        self.credits = AsyncCredits(self)
        self.teams = AsyncTeams(self)
        self.transactions = AsyncTransactions(self)
        self.usage = AsyncUsage(self)
        self.tiers = AsyncTiers(self)
        self.plans = AsyncPlans(self)
        self.subscriptions = AsyncSubscriptions(self)
        self.promos = AsyncPromos(self)
        self.spend_caps = AsyncSpendCaps(self)
        self.events = AsyncEvents(self)
        self.webhook_endpoints = AsyncWebhookEndpoints(self)
        self.analytics = AsyncAnalytics(self)
        self.providers = AsyncProviders(self)
        self.payments = AsyncPayments(self)
        self.admin = AsyncAdmin(self)
        self.service = AsyncService(self)

    # --- lifecycle ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncCreditd:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- requests -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool = True,
        keyed: bool = True,
    ) -> Any:
        """Send one API request with the client's retries; return the parsed JSON (or None).

        A POST gets an Idempotency-Key unless it is not ``idempotent`` (operator routes, never
        retried once sent) or not ``keyed`` (side-effect free, so safe to retry without one).
        """
        content = None if body is None else _json.dumps(body)
        key = None
        if method.upper() == "POST" and idempotent and keyed:
            key = idempotency_key or str(uuid.uuid4())
        await self._maybe_flush()
        response = await self._send(
            method.upper(), path, content=content, params=params, key=key, idempotent=idempotent
        )
        return _decode(response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: str | None,
        params: Mapping[str, Any] | None = None,
        key: str | None = None,
        idempotent: bool = True,
        retries: int | None = None,
    ) -> httpx.Response:
        headers: dict[str, str] = {}
        if content is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        policy = self._retry if retries is None else replace(self._retry, max_retries=retries)
        query = _query(params)
        retry = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, content=content, params=query, headers=headers
                )
            except httpx.TransportError as exc:
                delay = policy.transport_delay(exc, retry, idempotent=idempotent)
                if delay is None:
                    raise connection_error(exc) from exc
                log.info("creditd %s %s: %r; retry in %.2fs", method, path, exc, delay)
            else:
                if response.status_code < 400:
                    return response
                err = from_response(response.status_code, response.headers, _decode_error(response))
                delay = policy.status_delay(err, retry, idempotent=idempotent)
                if delay is None:
                    raise err
                log.info("creditd %s %s: %s; retry in %.2fs", method, path, err.code, delay)
            retry += 1
            await sleep_async(delay)

    # --- the completion spool -----------------------------------------------------------------

    async def _complete(
        self,
        transaction_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        spool: bool = True,
    ) -> CompleteResult:
        content = _json.dumps(body)
        key = idempotency_key or str(uuid.uuid4())
        await self._maybe_flush()
        try:
            response = await self._send(
                "POST", _complete_path(transaction_id), content=content, key=key
            )
        except _UNDELIVERED as exc:
            if not spool or self.spool is None:
                raise
            entry = await self._spool_put(transaction_id, content, key)
            log.warning("creditd: completion of %s spooled: %s", transaction_id, exc.message)
            raise CompletionSpooled(entry, exc) from exc
        return parse(CompleteResult, _decode(response))

    async def _spool_put(self, transaction_id: str, content: str, key: str) -> SpoolEntry:
        assert self.spool is not None
        entry = SpoolEntry.new(
            target=self._target,
            base_url=self.base_url,
            transaction_id=transaction_id,
            idempotency_key=key,
            body=content,
        )
        await run_io_async(self.spool.put, entry)
        self._spool_pending = True
        return entry

    async def flush_spool(self, *, retries: int | None = None) -> FlushResult:
        """Replay spooled completions (oldest first) with their original Idempotency-Key.

        Stops at the first one that still cannot be delivered (it stays, with those after it);
        one the server refuses for good (e.g. 409 with a different body) is set aside as
        rejected. Safe to call any time, from several clients or processes at once.
        """
        result = FlushResult()
        if self.spool is None:
            return result
        async with self._flush_lock:
            entries = await run_io_async(self.spool.entries, self._target)
            for i, entry in enumerate(entries):
                try:
                    response = await self._send(
                        "POST",
                        _complete_path(entry.transaction_id),
                        content=entry.body,
                        key=entry.idempotency_key,
                        retries=retries,
                    )
                except _KEEP_SPOOLED as exc:
                    log.info("creditd: spool flush stopped: %s", exc.message)
                    result.pending.extend(entries[i:])
                    break
                except APIStatusError as exc:
                    log.error("creditd: spooled completion rejected: %s", exc.message)
                    await run_io_async(self.spool.reject, entry, exc.message)
                    result.rejected.append((entry, exc))
                    continue
                await run_io_async(self.spool.remove, entry)
                result.delivered.append(parse(CompleteResult, _decode(response)))
            self._spool_pending = bool(result.pending)
            self._next_auto_flush = time.monotonic() + self._flush_interval
        return result

    async def _maybe_flush(self) -> None:
        """Before a request: try to deliver spooled completions (at most every interval)."""
        if self.spool is None or not self._auto_flush or self._spool_pending is False:
            return
        if time.monotonic() < self._next_auto_flush or self._flush_lock.locked():
            return  # not due yet, or another call is flushing right now
        try:
            await self.flush_spool(retries=0)
        except Exception:  # background delivery must never break the caller's own request
            log.warning("creditd: spool flush failed", exc_info=True)

    # --- helpers ------------------------------------------------------------------------------

    def capture_usage(
        self,
        *,
        user_id: str | Callable[..., str],
        model: str | Callable[..., str],
        provisional_tokens: Tokens | None = None,
        feature_identifier: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        hold_ttl_seconds: int | None = None,
        usage: Callable[[Any], Tokens | None] | None = None,
    ) -> AsyncUsageCapture:
        """Meter one model call: as ``async with client.capture_usage(...) as cap:`` or as a
        decorator of an async function (``user_id``/``model`` may then be callables of its
        arguments, and ``usage`` extracts the token counts from its return value)."""
        return AsyncUsageCapture(
            self,
            user_id=user_id,
            model=model,
            provisional_tokens=provisional_tokens,
            feature_identifier=feature_identifier,
            metadata=metadata,
            hold_ttl_seconds=hold_ttl_seconds,
            usage=usage,
        )

    async def paginate(
        self, fetch: Callable[..., Awaitable[Page[T]]], /, *args: Any, **kwargs: Any
    ) -> AsyncIterator[T]:
        """Every item of a list, page after page: ``paginate(client.users.list, limit=100)``."""
        cursor = kwargs.pop("starting_after", None)
        while True:
            page = await fetch(*args, starting_after=cursor, **kwargs)
            for item in page.data:
                yield item
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor


class AsyncUsageCapture:
    """One metered model call: start (hold the provisional price), run, complete.

    Not admitted → :class:`~creditd_sdk.errors.NotAdmitted` (an ``InsufficientCredits`` when
    credits are short) and the body does not run. The body's exception → completed with
    ``success: false`` (hold released, nothing charged) and re-raised. Success → completed with
    the usage given to :meth:`set_usage` (else the provisional tokens are charged). A completion
    that cannot be delivered is spooled (``spooled``) rather than raised.
    """

    def __init__(
        self,
        client: AsyncCreditd,
        *,
        user_id: str | Callable[..., str],
        model: str | Callable[..., str],
        provisional_tokens: Tokens | None,
        feature_identifier: str | None,
        metadata: Mapping[str, Any] | None,
        hold_ttl_seconds: int | None,
        usage: Callable[[Any], Tokens | None] | None,
    ) -> None:
        self._client = client
        self._user_id = user_id
        self._model = model
        self._provisional = provisional_tokens
        self._feature = feature_identifier
        self._metadata = metadata
        self._ttl = hold_ttl_seconds
        self._usage = usage
        self._tokens: dict[str, object] | None = None
        self._completion_metadata: dict[str, Any] = {}
        self._context: Token[Any] | None = None
        self.start: StartResult | None = None
        self.result: CompleteResult | None = None
        self.spooled: CompletionSpooled | None = None

    @property
    def admitted(self) -> bool:
        return self.start is not None and self.start.admitted

    @property
    def transaction_id(self) -> str | None:
        return None if self.start is None else self.start.transaction_id

    def set_usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Report the call's real usage (charged at completion); ``metadata`` is merged in."""
        self._tokens = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
        }
        if metadata:
            self._completion_metadata.update(metadata)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncUsageCapture:
        """A fresh capture for one call of a decorated function."""
        user_id = self._user_id(*args, **kwargs) if callable(self._user_id) else self._user_id
        model = self._model(*args, **kwargs) if callable(self._model) else self._model
        return AsyncUsageCapture(
            self._client,
            user_id=user_id,
            model=model,
            provisional_tokens=self._provisional,
            feature_identifier=self._feature,
            metadata=self._metadata,
            hold_ttl_seconds=self._ttl,
            usage=self._usage,
        )

    async def __aenter__(self) -> AsyncUsageCapture:
        if self.start is not None:
            raise RuntimeError("a capture_usage block runs once; as a decorator, once per call")
        if not isinstance(self._user_id, str) or not isinstance(self._model, str):
            raise TypeError("user_id and model may be callables only in the decorator form")
        self.start = await self._client.transactions.start(
            user_id=self._user_id,
            model=self._model,
            provisional_tokens=self._provisional,
            feature_identifier=self._feature,
            metadata=self._metadata,
            hold_ttl_seconds=self._ttl,
        )
        if not self.start.admitted:
            raise not_admitted(self.start)
        self._context = current.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._context is not None:
            current.reset(self._context)
            self._context = None
        assert self.start is not None
        txn = self.start.transaction_id
        body: dict[str, Any] = {"success": exc is None}
        if exc is None and self._tokens is not None:
            body["finalized_tokens"] = self._tokens
        if self._completion_metadata:
            body["metadata"] = self._completion_metadata
        if exc is not None and not isinstance(exc, Exception) and self._client.spool is not None:
            # Cancelled or interrupted: no waiting on the network now; the spool releases it.
            entry = await self._client._spool_put(txn, _json.dumps(body), str(uuid.uuid4()))
            self.spooled = CompletionSpooled(entry, CreditdError(type(exc).__name__))
            return
        try:
            self.result = await self._client._complete(txn, body)
        except CompletionSpooled as spooled:
            self.spooled = spooled
        except CreditdError:
            if exc is None:
                raise
            # The body's own exception is what the caller must see; the hold expires anyway.
            log.warning("creditd: could not release the hold of %s", txn, exc_info=True)

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def metered(*args: P.args, **kwargs: P.kwargs) -> R:
            async with self._bind(args, kwargs) as capture:
                result = await fn(*args, **kwargs)
                if self._usage is not None and capture._tokens is None:
                    tokens = self._usage(result)
                    if tokens is not None:
                        capture._tokens = _token_dict(tokens)
            return result

        return metered


class _AsyncResource:
    def __init__(self, client: AsyncCreditd) -> None:
        self._c = client


class AsyncProjectResource(_AsyncResource):
    """The key's own project."""

    async def get(self) -> Project:
        return parse(Project, await self._c.request("GET", "/v1/project"))

    async def update(
        self, *, name: str = NOT_GIVEN, settings: ProjectSettingsPatch = NOT_GIVEN
    ) -> Project:
        body = _given(name=name, settings=settings)
        return parse(Project, await self._c.request("PATCH", "/v1/project", body=body))


class AsyncApiKeys(_AsyncResource):
    async def create(
        self,
        *,
        name: str,
        scopes: Sequence[Scope],
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKey:
        """Create a key; its secret is in ``key`` (shown only here)."""
        body = _present(name=name, scopes=list(scopes), expires_at=expires_at)
        data = await self._c.request(
            "POST", "/v1/api-keys", body=body, idempotency_key=idempotency_key
        )
        return parse(ApiKey, data)

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[ApiKey]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(ApiKey, await self._c.request("GET", "/v1/api-keys", params=params))

    async def revoke(self, key_id: str) -> None:
        await self._c.request("DELETE", f"/v1/api-keys/{_seg(key_id)}")


class AsyncModels(_AsyncResource):
    """Model prices: credits per 1,000 tokens (``_default`` prices every other model), or a
    pricing ``expression`` over the usage metrics."""

    async def put(
        self,
        model_id: str,
        *,
        input_price_per_1k: Amount | None = None,
        output_price_per_1k: Amount | None = None,
        cached_input_price_per_1k: Amount | None = None,
        request_price: Amount | None = None,
        expression: str | None = None,
    ) -> ModelPrice:
        """Per-1K prices (input and output), or ``expression`` instead (exactly one form)."""
        body = _present(
            input_price_per_1k=_amount(input_price_per_1k),
            output_price_per_1k=_amount(output_price_per_1k),
            cached_input_price_per_1k=_amount(cached_input_price_per_1k),
            request_price=_amount(request_price),
            expression=expression,
        )
        data = await self._c.request("PUT", f"/v1/models/{_seg(model_id)}", body=body)
        return parse(ModelPrice, data)

    async def get(self, model_id: str) -> ModelPrice:
        return parse(ModelPrice, await self._c.request("GET", f"/v1/models/{_seg(model_id)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[ModelPrice]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(ModelPrice, await self._c.request("GET", "/v1/models", params=params))

    async def delete(self, model_id: str) -> None:
        await self._c.request("DELETE", f"/v1/models/{_seg(model_id)}")


class AsyncJobs(_AsyncResource):
    """Fixed-cost jobs, charged by ``usage.record(job=...)``."""

    async def put(self, name: str, *, price: Amount) -> Job:
        data = await self._c.request(
            "PUT", f"/v1/jobs/{_seg(name)}", body={"price": _amount(price)}
        )
        return parse(Job, data)

    async def get(self, name: str) -> Job:
        return parse(Job, await self._c.request("GET", f"/v1/jobs/{_seg(name)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Job]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(Job, await self._c.request("GET", "/v1/jobs", params=params))

    async def delete(self, name: str) -> None:
        await self._c.request("DELETE", f"/v1/jobs/{_seg(name)}")


class AsyncPricing(_AsyncResource):
    async def evaluate(
        self, *, model: str, tokens: Tokens, user_id: str | None = None
    ) -> PriceEvaluation:
        """What this usage would cost (at ``user_id``'s tier), and how. No side effect."""
        body = _present(model=model, tokens=_token_dict(tokens), user_id=user_id)
        data = await self._c.request("POST", "/v1/pricing/evaluate", body=body, keyed=False)
        return parse(PriceEvaluation, data)


class AsyncUsers(_AsyncResource):
    """A project's end users, addressed by the project's own ids."""

    async def create(
        self,
        id: str,
        *,
        tier_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> User:
        body = _present(id=id, tier_id=tier_id, metadata=metadata)
        data = await self._c.request(
            "POST", "/v1/users", body=body, idempotency_key=idempotency_key
        )
        return parse(User, data)

    async def get(self, user_id: str) -> User:
        return parse(User, await self._c.request("GET", f"/v1/users/{_seg(user_id)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[User]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(User, await self._c.request("GET", "/v1/users", params=params))

    async def update(self, user_id: str, *, metadata: Mapping[str, Any] | None = NOT_GIVEN) -> User:
        """Merge ``metadata`` into the user's (a None value removes that key)."""
        body = _given(metadata=metadata)
        data = await self._c.request("PATCH", f"/v1/users/{_seg(user_id)}", body=body)
        return parse(User, data)

    async def delete(self, user_id: str) -> None:
        await self._c.request("DELETE", f"/v1/users/{_seg(user_id)}")

    async def assign_tier(
        self,
        user_id: str,
        *,
        tier_id: str,
        reset_balance: bool = False,
        idempotency_key: str | None = None,
    ) -> User:
        body = {"tier_id": tier_id, "reset_balance": reset_balance}
        data = await self._c.request(
            "POST", f"/v1/users/{_seg(user_id)}/tier", body=body, idempotency_key=idempotency_key
        )
        return parse(User, data)


class AsyncCredits(_AsyncResource):
    """Grants, debits and the ledger of a user."""

    async def grant(
        self,
        user_id: str,
        amount: Amount,
        *,
        reason: str | None = None,
        expires_at: datetime | None = None,
        source: GrantSource | None = None,
        category: GrantCategory | None = None,
        idempotency_key: str | None = None,
    ) -> Grant:
        """Grant credits; ``balance`` of the result is the user's available balance after."""
        body = _present(
            amount=to_amount(amount),
            reason=reason,
            expires_at=expires_at,
            source=source,
            category=category,
        )
        data = await self._c.request(
            "POST", f"/v1/users/{_seg(user_id)}/credits", body=body, idempotency_key=idempotency_key
        )
        return parse(Grant, data)

    async def debit(
        self,
        user_id: str,
        amount: Amount,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Debit:
        """Remove credits; more than available → :class:`InsufficientCredits`."""
        body = _present(amount=to_amount(amount), reason=reason)
        data = await self._c.request(
            "POST", f"/v1/users/{_seg(user_id)}/debits", body=body, idempotency_key=idempotency_key
        )
        return parse(Debit, data)

    async def list_grants(
        self, user_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Grant]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/users/{_seg(user_id)}/grants", params=params)
        return parse_page(Grant, data)

    async def list_ledger(
        self, user_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[LedgerEntry]:
        """The user's append-only ledger, oldest first."""
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/users/{_seg(user_id)}/ledger", params=params)
        return parse_page(LedgerEntry, data)

    async def export_ledger(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int | None = None,
        prev_hash: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The project's ledger export (``GET /v1/ledger/export``), one dict per JSON line
        (amounts as ``Decimal``), the ``ledger_export_end`` trailer last. A stream cut short
        raises ``CreditdError`` (code ``export_incomplete``): resume with ``after`` = the last
        entry's ``id`` and ``prev_hash`` = the last line's ``hash``. Check the chain with
        ``creditd ledger verify-export`` on the saved lines."""
        params = {"since": since, "until": until, "after": after, "prev_hash": prev_hash}
        ended = False
        async with self._c._http.stream(
            "GET", "/v1/ledger/export", params=_query(params)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise from_response(response.status_code, response.headers, _decode_error(response))
            try:
                async for line in response.aiter_lines():
                    if line:
                        obj = _json.loads(line)
                        ended = obj.get("object") == "ledger_export_end"
                        yield obj
            except httpx.HTTPError as exc:
                raise CreditdError(
                    f"the ledger export was cut short: {exc!r}", code="export_incomplete"
                ) from exc
        if not ended:
            raise CreditdError(
                "the ledger export ended without its trailer", code="export_incomplete"
            )


class AsyncTeams(_AsyncResource):
    """Teams: a shared balance its members charge (``team_id`` on start, record, check)."""

    async def create(
        self,
        id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Team:
        body = _present(id=id, name=name, metadata=metadata)
        data = await self._c.request(
            "POST", "/v1/teams", body=body, idempotency_key=idempotency_key
        )
        return parse(Team, data)

    async def get(self, team_id: str) -> Team:
        return parse(Team, await self._c.request("GET", f"/v1/teams/{_seg(team_id)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Team]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(Team, await self._c.request("GET", "/v1/teams", params=params))

    async def update(
        self,
        team_id: str,
        *,
        name: str | None = NOT_GIVEN,
        metadata: Mapping[str, Any] | None = NOT_GIVEN,
    ) -> Team:
        """Set the name and/or merge ``metadata`` (a None value removes that key)."""
        body = _given(name=name, metadata=metadata)
        data = await self._c.request("PATCH", f"/v1/teams/{_seg(team_id)}", body=body)
        return parse(Team, data)

    async def delete(self, team_id: str) -> None:
        """Close the team's account and remove its members (its id is not reused)."""
        await self._c.request("DELETE", f"/v1/teams/{_seg(team_id)}")

    async def put_member(
        self,
        team_id: str,
        user_id: str,
        *,
        role: TeamRole = "member",
        spend_caps: Sequence[MemberSpendCapIn] = (),
    ) -> TeamMember:
        """Add an existing user to the team, or replace its role and team spend caps."""
        caps = [{"period": c["period"], "limit": to_amount(c["limit"])} for c in spend_caps]
        body = {"role": role, "spend_caps": caps}
        path = f"/v1/teams/{_seg(team_id)}/members/{_seg(user_id)}"
        return parse(TeamMember, await self._c.request("PUT", path, body=body))

    async def list_members(
        self, team_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[TeamMember]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/teams/{_seg(team_id)}/members", params=params)
        return parse_page(TeamMember, data)

    async def remove_member(self, team_id: str, user_id: str) -> None:
        await self._c.request("DELETE", f"/v1/teams/{_seg(team_id)}/members/{_seg(user_id)}")

    async def grant(
        self,
        team_id: str,
        amount: Amount,
        *,
        reason: str | None = None,
        expires_at: datetime | None = None,
        source: GrantSource | None = None,
        category: GrantCategory | None = None,
        idempotency_key: str | None = None,
    ) -> Grant:
        """Grant credits to the team's account; ``balance``: its available balance after."""
        body = _present(
            amount=to_amount(amount),
            reason=reason,
            expires_at=expires_at,
            source=source,
            category=category,
        )
        data = await self._c.request(
            "POST", f"/v1/teams/{_seg(team_id)}/credits", body=body, idempotency_key=idempotency_key
        )
        return parse(Grant, data)

    async def debit(
        self,
        team_id: str,
        amount: Amount,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Debit:
        body = _present(amount=to_amount(amount), reason=reason)
        data = await self._c.request(
            "POST", f"/v1/teams/{_seg(team_id)}/debits", body=body, idempotency_key=idempotency_key
        )
        return parse(Debit, data)

    async def list_grants(
        self, team_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Grant]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/teams/{_seg(team_id)}/grants", params=params)
        return parse_page(Grant, data)

    async def list_ledger(
        self, team_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[LedgerEntry]:
        """The team account's ledger, oldest first (``user_id``: the member who charged)."""
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/teams/{_seg(team_id)}/ledger", params=params)
        return parse_page(LedgerEntry, data)


class AsyncTransactions(_AsyncResource):
    """Usage transactions: start (hold), complete (charge or release), extend, refund."""

    async def start(
        self,
        *,
        user_id: str,
        model: str,
        provisional_tokens: Tokens | None = None,
        feature_identifier: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        hold_ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
        team_id: str | None = None,
    ) -> StartResult:
        """Admit the call and hold its provisional price. Check ``admitted`` before calling.
        With ``team_id`` the team's account is charged (the user must be a member)."""
        body = _present(
            user_id=user_id,
            model=model,
            team_id=team_id,
            provisional_tokens=_token_dict(provisional_tokens),
            feature_identifier=feature_identifier,
            metadata=metadata,
            hold_ttl_seconds=hold_ttl_seconds,
        )
        data = await self._c.request(
            "POST", "/v1/transactions/start", body=body, idempotency_key=idempotency_key
        )
        return parse(StartResult, data)

    async def complete(
        self,
        transaction_id: str,
        *,
        success: bool,
        finalized_tokens: Tokens | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        spool: bool = True,
    ) -> CompleteResult:
        """Charge the real usage (``success=True``) or release the hold (``success=False``).

        If it cannot be delivered after the retries, it is spooled and
        :class:`CompletionSpooled` is raised (unless ``spool=False``: the error itself).
        """
        body = _present(
            success=success, finalized_tokens=_token_dict(finalized_tokens), metadata=metadata
        )
        return await self._c._complete(
            transaction_id, body, idempotency_key=idempotency_key, spool=spool
        )

    async def extend(
        self, transaction_id: str, *, hold_ttl_seconds: int, idempotency_key: str | None = None
    ) -> Transaction:
        data = await self._c.request(
            "POST",
            f"/v1/transactions/{_seg(transaction_id)}/extend",
            body={"hold_ttl_seconds": hold_ttl_seconds},
            idempotency_key=idempotency_key,
        )
        return parse(Transaction, data)

    async def refund(
        self,
        transaction_id: str,
        *,
        amount: Amount | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Refund (part of) a completed transaction's charge; default: all not yet refunded."""
        body = _present(amount=_amount(amount), reason=reason)
        data = await self._c.request(
            "POST",
            f"/v1/transactions/{_seg(transaction_id)}/refund",
            body=body,
            idempotency_key=idempotency_key,
        )
        return parse(RefundResult, data)

    async def get(self, transaction_id: str) -> Transaction:
        data = await self._c.request("GET", f"/v1/transactions/{_seg(transaction_id)}")
        return parse(Transaction, data)

    async def list(
        self,
        *,
        user_id: str | None = None,
        status: TransactionStatus | None = None,
        model: str | None = None,
        feature_identifier: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> Page[Transaction]:
        params = {
            "user_id": user_id,
            "status": status,
            "model": model,
            "feature_identifier": feature_identifier,
            "created_after": created_after,
            "created_before": created_before,
            "limit": limit,
            "starting_after": starting_after,
        }
        return parse_page(
            Transaction, await self._c.request("GET", "/v1/transactions", params=params)
        )


class AsyncUsage(_AsyncResource):
    async def record(
        self,
        *,
        user_id: str,
        model: str | None = None,
        tokens: Tokens | None = None,
        job: str | None = None,
        quantity: int | None = None,
        feature_identifier: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        team_id: str | None = None,
    ) -> UsageResult:
        """Charge usage that already happened, in one call (never refused for the balance):
        ``model`` with ``tokens``, or a fixed-cost ``job`` (``quantity`` runs)."""
        body = _present(
            user_id=user_id,
            model=model,
            team_id=team_id,
            tokens=_token_dict(tokens),
            job=job,
            quantity=quantity,
            feature_identifier=feature_identifier,
            metadata=metadata,
        )
        data = await self._c.request(
            "POST", "/v1/usage", body=body, idempotency_key=idempotency_key
        )
        return parse(UsageResult, data)

    async def check(
        self,
        *,
        user_id: str,
        model: str | None = None,
        provisional_tokens: Tokens | None = None,
        amount: Amount | None = None,
        team_id: str | None = None,
    ) -> CheckResult:
        """Would this usage be admitted? No side effect.

        Sent without an Idempotency-Key: there is no effect to deduplicate, and a key would
        make the server store a response for every check.
        """
        body = _present(
            user_id=user_id,
            model=model,
            provisional_tokens=_token_dict(provisional_tokens),
            amount=_amount(amount),
            team_id=team_id,
        )
        data = await self._c.request("POST", "/v1/check", body=body, keyed=False)
        return parse(CheckResult, data)


class AsyncTiers(_AsyncResource):
    async def create(
        self,
        id: str,
        *,
        name: str,
        credits: Amount | None = None,
        refill_interval: RefillInterval | None = None,
        refill_mode: RefillMode | None = None,
        rollover_cap: Amount | None = None,
        allow_overage: bool | None = None,
        overage_limit: Amount | None = None,
        price_multiplier: Amount | None = None,
        model_overrides: Mapping[str, ModelOverride] | None = None,
        max_concurrent_transactions: int | None = None,
        features: Mapping[str, Any] | None = None,
        is_default: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Tier:
        body = _present(
            id=id,
            name=name,
            credits=_amount(credits),
            refill_interval=refill_interval,
            refill_mode=refill_mode,
            rollover_cap=_amount(rollover_cap),
            allow_overage=allow_overage,
            overage_limit=_amount(overage_limit),
            price_multiplier=_amount(price_multiplier),
            model_overrides=_overrides(model_overrides),
            max_concurrent_transactions=max_concurrent_transactions,
            features=features,
            is_default=is_default,
        )
        data = await self._c.request(
            "POST", "/v1/tiers", body=body, idempotency_key=idempotency_key
        )
        return parse(Tier, data)

    async def get(self, tier_id: str) -> Tier:
        return parse(Tier, await self._c.request("GET", f"/v1/tiers/{_seg(tier_id)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Tier]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(Tier, await self._c.request("GET", "/v1/tiers", params=params))

    async def update(
        self,
        tier_id: str,
        *,
        name: str = NOT_GIVEN,
        credits: Amount = NOT_GIVEN,
        refill_interval: RefillInterval = NOT_GIVEN,
        refill_mode: RefillMode = NOT_GIVEN,
        rollover_cap: Amount | None = NOT_GIVEN,
        allow_overage: bool = NOT_GIVEN,
        overage_limit: Amount | None = NOT_GIVEN,
        price_multiplier: Amount = NOT_GIVEN,
        model_overrides: Mapping[str, ModelOverride] = NOT_GIVEN,
        max_concurrent_transactions: int | None = NOT_GIVEN,
        features: Mapping[str, Any] = NOT_GIVEN,
        is_default: bool = NOT_GIVEN,
    ) -> Tier:
        """Change the given fields only (None clears an optional one)."""
        body = _given(
            name=name,
            credits=_amount(credits),
            refill_interval=refill_interval,
            refill_mode=refill_mode,
            rollover_cap=_amount(rollover_cap),
            allow_overage=allow_overage,
            overage_limit=_amount(overage_limit),
            price_multiplier=_amount(price_multiplier),
            model_overrides=_overrides(model_overrides),
            max_concurrent_transactions=max_concurrent_transactions,
            features=features,
            is_default=is_default,
        )
        return parse(Tier, await self._c.request("PATCH", f"/v1/tiers/{_seg(tier_id)}", body=body))

    async def delete(self, tier_id: str) -> None:
        await self._c.request("DELETE", f"/v1/tiers/{_seg(tier_id)}")


def _overrides(value: Any) -> Any:
    if value is None or value is NOT_GIVEN:
        return value
    return {
        model: {k: _amount(v) for k, v in override.items()} for model, override in value.items()
    }


def _price(value: Any) -> Any:
    if value is None or value is NOT_GIVEN:
        return value
    return {"amount": to_amount(value["amount"]), "currency": value["currency"]}


class AsyncPlans(_AsyncResource):
    async def create(
        self,
        id: str,
        *,
        name: str,
        price: PriceIn,
        interval: PlanInterval,
        credits_per_period: Amount,
        tier_id: str | None = None,
        stripe_price_id: str | None = None,
        razorpay_plan_id: str | None = None,
        active: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Plan:
        body = _present(
            id=id,
            name=name,
            price=_price(price),
            interval=interval,
            credits_per_period=to_amount(credits_per_period),
            tier_id=tier_id,
            stripe_price_id=stripe_price_id,
            razorpay_plan_id=razorpay_plan_id,
            active=active,
        )
        data = await self._c.request(
            "POST", "/v1/plans", body=body, idempotency_key=idempotency_key
        )
        return parse(Plan, data)

    async def get(self, plan_id: str) -> Plan:
        return parse(Plan, await self._c.request("GET", f"/v1/plans/{_seg(plan_id)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Plan]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(Plan, await self._c.request("GET", "/v1/plans", params=params))

    async def update(
        self,
        plan_id: str,
        *,
        name: str = NOT_GIVEN,
        price: PriceIn = NOT_GIVEN,
        credits_per_period: Amount = NOT_GIVEN,
        tier_id: str | None = NOT_GIVEN,
        stripe_price_id: str | None = NOT_GIVEN,
        razorpay_plan_id: str | None = NOT_GIVEN,
        active: bool = NOT_GIVEN,
    ) -> Plan:
        """Change the given fields only (None clears an optional one)."""
        body = _given(
            name=name,
            price=_price(price),
            credits_per_period=_amount(credits_per_period),
            tier_id=tier_id,
            stripe_price_id=stripe_price_id,
            razorpay_plan_id=razorpay_plan_id,
            active=active,
        )
        return parse(Plan, await self._c.request("PATCH", f"/v1/plans/{_seg(plan_id)}", body=body))

    async def delete(self, plan_id: str) -> None:
        await self._c.request("DELETE", f"/v1/plans/{_seg(plan_id)}")


class AsyncSubscriptions(_AsyncResource):
    async def create(
        self,
        user_id: str,
        *,
        plan_id: str,
        provider: Provider = "manual",
        success_url: str | None = None,
        cancel_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> SubscriptionCreated:
        """Subscribe; through ``stripe``/``razorpay`` the user pays at ``checkout_url`` first."""
        body = _present(
            plan_id=plan_id, provider=provider, success_url=success_url, cancel_url=cancel_url
        )
        data = await self._c.request(
            "POST",
            f"/v1/users/{_seg(user_id)}/subscriptions",
            body=body,
            idempotency_key=idempotency_key,
        )
        return parse(SubscriptionCreated, data)

    async def list(
        self, user_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Subscription]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request(
            "GET", f"/v1/users/{_seg(user_id)}/subscriptions", params=params
        )
        return parse_page(Subscription, data)

    async def get(self, subscription_id: str) -> Subscription:
        data = await self._c.request("GET", f"/v1/subscriptions/{_seg(subscription_id)}")
        return parse(Subscription, data)

    async def cancel(
        self,
        subscription_id: str,
        *,
        at_period_end: bool = True,
        idempotency_key: str | None = None,
    ) -> Subscription:
        data = await self._c.request(
            "POST",
            f"/v1/subscriptions/{_seg(subscription_id)}/cancel",
            body={"at_period_end": at_period_end},
            idempotency_key=idempotency_key,
        )
        return parse(Subscription, data)


class AsyncPromos(_AsyncResource):
    async def create(
        self,
        code: str,
        *,
        credits: Amount,
        description: str | None = None,
        max_redemptions: int | None = None,
        max_per_user: int | None = None,
        starts_at: datetime | None = None,
        expires_at: datetime | None = None,
        eligible_tier_ids: Sequence[str] | None = None,
        eligible_user_ids: Sequence[str] | None = None,
        new_users_only: bool | None = None,
        credit_expires_in_days: int | None = None,
        active: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Promo:
        body = _present(
            code=code,
            credits=to_amount(credits),
            description=description,
            max_redemptions=max_redemptions,
            max_per_user=max_per_user,
            starts_at=starts_at,
            expires_at=expires_at,
            eligible_tier_ids=eligible_tier_ids,
            eligible_user_ids=eligible_user_ids,
            new_users_only=new_users_only,
            credit_expires_in_days=credit_expires_in_days,
            active=active,
        )
        data = await self._c.request(
            "POST", "/v1/promos", body=body, idempotency_key=idempotency_key
        )
        return parse(Promo, data)

    async def get(self, code: str) -> Promo:
        return parse(Promo, await self._c.request("GET", f"/v1/promos/{_seg(code)}"))

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Promo]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(Promo, await self._c.request("GET", "/v1/promos", params=params))

    async def update(
        self,
        code: str,
        *,
        description: str | None = NOT_GIVEN,
        max_redemptions: int | None = NOT_GIVEN,
        max_per_user: int = NOT_GIVEN,
        starts_at: datetime | None = NOT_GIVEN,
        expires_at: datetime | None = NOT_GIVEN,
        eligible_tier_ids: Sequence[str] | None = NOT_GIVEN,
        eligible_user_ids: Sequence[str] | None = NOT_GIVEN,
        new_users_only: bool = NOT_GIVEN,
        credit_expires_in_days: int | None = NOT_GIVEN,
        active: bool = NOT_GIVEN,
    ) -> Promo:
        """Change the given fields only (None clears an optional one); code and credits stay."""
        body = _given(
            description=description,
            max_redemptions=max_redemptions,
            max_per_user=max_per_user,
            starts_at=starts_at,
            expires_at=expires_at,
            eligible_tier_ids=eligible_tier_ids,
            eligible_user_ids=eligible_user_ids,
            new_users_only=new_users_only,
            credit_expires_in_days=credit_expires_in_days,
            active=active,
        )
        return parse(Promo, await self._c.request("PATCH", f"/v1/promos/{_seg(code)}", body=body))

    async def delete(self, code: str) -> None:
        await self._c.request("DELETE", f"/v1/promos/{_seg(code)}")

    async def eligibility(self, code: str, *, user_id: str) -> Eligibility:
        """Could this user claim the promo now? No side effect."""
        data = await self._c.request(
            "GET", f"/v1/promos/{_seg(code)}/eligibility", params={"user_id": user_id}
        )
        return parse(Eligibility, data)

    async def claim(self, code: str, *, user_id: str, idempotency_key: str | None = None) -> Claim:
        """Grant the promo's credits; ineligible → :class:`PromoIneligible` (409)."""
        data = await self._c.request(
            "POST",
            f"/v1/promos/{_seg(code)}/claim",
            body={"user_id": user_id},
            idempotency_key=idempotency_key,
        )
        return parse(Claim, data)

    async def list_redemptions(
        self, code: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Redemption]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", f"/v1/promos/{_seg(code)}/redemptions", params=params)
        return parse_page(Redemption, data)


class AsyncSpendCaps(_AsyncResource):
    """Per-user spend caps over UTC days or months (per model with ``model``)."""

    async def put(
        self,
        user_id: str,
        period: CapPeriod,
        *,
        limit: Amount,
        action: CapAction,
        model: str | None = None,
    ) -> SpendCap:
        body = _present(limit=to_amount(limit), action=action, model=model)
        data = await self._c.request(
            "PUT", f"/v1/users/{_seg(user_id)}/spend-caps/{_seg(period)}", body=body
        )
        return parse(SpendCap, data)

    async def list(self, user_id: str) -> SpendCapList:
        data = await self._c.request("GET", f"/v1/users/{_seg(user_id)}/spend-caps")
        return [parse(SpendCap, item) for item in data["data"]]

    async def delete(self, user_id: str, period: CapPeriod, *, model: str | None = None) -> None:
        await self._c.request(
            "DELETE",
            f"/v1/users/{_seg(user_id)}/spend-caps/{_seg(period)}",
            params={"model": model},
        )


class AsyncEvents(_AsyncResource):
    async def list(
        self,
        *,
        type: str | None = None,
        user_id: str | None = None,
        created_after: datetime | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> Page[Event]:
        """The event log (outbox), oldest first."""
        params = {
            "type": type,
            "user_id": user_id,
            "created_after": created_after,
            "limit": limit,
            "starting_after": starting_after,
        }
        return parse_page(Event, await self._c.request("GET", "/v1/events", params=params))

    async def get(self, event_id: str) -> Event:
        return parse(Event, await self._c.request("GET", f"/v1/events/{_seg(event_id)}"))

    async def redeliver(
        self,
        event_id: str,
        *,
        endpoint_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> RedeliverResult:
        """Send the event again (admin scope): to every enabled endpoint subscribed to its
        type, or only to ``endpoint_id``. Each delivery is pending again, due now."""
        data = await self._c.request(
            "POST",
            f"/v1/events/{_seg(event_id)}/redeliver",
            body=_present(endpoint_id=endpoint_id),
            idempotency_key=idempotency_key,
        )
        return parse(RedeliverResult, data)


class AsyncWebhookEndpoints(_AsyncResource):
    """Where the project's events are delivered (admin scope), signed per Standard Webhooks
    with the endpoint's ``secret`` (shown by ``create`` and ``rotate_secret`` only)."""

    async def create(
        self,
        *,
        url: str,
        events: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        """Register ``url`` for ``events`` (default ``["*"]``: all); store ``secret``."""
        body = _present(
            url=url,
            events=None if events is None else list(events),
            description=description,
            enabled=enabled,
            metadata=None if metadata is None else dict(metadata),
        )
        data = await self._c.request(
            "POST", "/v1/webhook-endpoints", body=body, idempotency_key=idempotency_key
        )
        return parse(WebhookEndpoint, data)

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        data = await self._c.request("GET", f"/v1/webhook-endpoints/{_seg(endpoint_id)}")
        return parse(WebhookEndpoint, data)

    async def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[WebhookEndpoint]:
        params = {"limit": limit, "starting_after": starting_after}
        data = await self._c.request("GET", "/v1/webhook-endpoints", params=params)
        return parse_page(WebhookEndpoint, data)

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str = NOT_GIVEN,
        events: Sequence[str] = NOT_GIVEN,
        description: str | None = NOT_GIVEN,
        enabled: bool = NOT_GIVEN,
        metadata: Mapping[str, Any] = NOT_GIVEN,
    ) -> WebhookEndpoint:
        """Change the given fields only. ``enabled=False`` disables it and cancels its pending
        deliveries; ``metadata`` is merged (a None value removes a key)."""
        body = _given(
            url=url,
            events=events if events is NOT_GIVEN else list(events),
            description=description,
            enabled=enabled,
            metadata=metadata if metadata is NOT_GIVEN else dict(metadata),
        )
        data = await self._c.request(
            "PATCH", f"/v1/webhook-endpoints/{_seg(endpoint_id)}", body=body
        )
        return parse(WebhookEndpoint, data)

    async def delete(self, endpoint_id: str) -> None:
        await self._c.request("DELETE", f"/v1/webhook-endpoints/{_seg(endpoint_id)}")

    async def rotate_secret(
        self,
        endpoint_id: str,
        *,
        grace_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        """A new ``secret``; the replaced one keeps signing for ``grace_seconds`` (the
        server's default, 24 h, when None; 0 retires it at once)."""
        data = await self._c.request(
            "POST",
            f"/v1/webhook-endpoints/{_seg(endpoint_id)}/rotate-secret",
            body=_present(grace_seconds=grace_seconds) or None,
            idempotency_key=idempotency_key,
        )
        return parse(WebhookEndpoint, data)

    async def test(self, endpoint_id: str, *, idempotency_key: str | None = None) -> Event:
        """Send a ``webhook.test`` event to this endpoint only; returns the event."""
        data = await self._c.request(
            "POST",
            f"/v1/webhook-endpoints/{_seg(endpoint_id)}/test",
            idempotency_key=idempotency_key,
        )
        return parse(Event, data)

    async def list_deliveries(
        self,
        endpoint_id: str,
        *,
        event_id: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> Page[WebhookAttempt]:
        """The endpoint's delivery attempts, newest first (``event_id``: one event's only)."""
        params = {"event_id": event_id, "limit": limit, "starting_after": starting_after}
        data = await self._c.request(
            "GET", f"/v1/webhook-endpoints/{_seg(endpoint_id)}/deliveries", params=params
        )
        return parse_page(WebhookAttempt, data)


class AsyncAnalytics(_AsyncResource):
    async def spend(
        self,
        *,
        group_by: GroupBy,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        team_id: str | None = None,
    ) -> SpendReport:
        """Credits spent per user, model, feature, UTC day, team or team member over a window
        of whole UTC days (``team_id``: one team's charges, with group_by team or member)."""
        params = {
            "group_by": group_by,
            "start": start,
            "end": end,
            "limit": limit,
            "team_id": team_id,
        }
        data = await self._c.request("GET", "/v1/analytics/spend", params=params)
        return parse(SpendReport, data)

    async def summary(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> Summary:
        params = {"start": start, "end": end}
        data = await self._c.request("GET", "/v1/analytics/summary", params=params)
        return parse(Summary, data)

    async def liability(self) -> Liability:
        """Credits outstanding now: paid ones and their money value (deferred revenue) by
        currency, promotional ones, and debt."""
        return parse(Liability, await self._c.request("GET", "/v1/analytics/liability"))


class AsyncProviders(_AsyncResource):
    """The project's own Stripe and Razorpay accounts (admin scope); secrets come back masked."""

    async def put_stripe(
        self,
        *,
        secret_key: str,
        webhook_secret: str,
        webhook_secret_grace_seconds: int | None = None,
    ) -> ProviderAccount:
        """Set the Stripe account; a changed webhook secret leaves the previous one verifying
        for ``webhook_secret_grace_seconds`` (the server's default when None)."""
        body = _present(
            secret_key=secret_key,
            webhook_secret=webhook_secret,
            webhook_secret_grace_seconds=webhook_secret_grace_seconds,
        )
        data = await self._c.request("PUT", "/v1/providers/stripe", body=body)
        return parse(ProviderAccount, data)

    async def put_razorpay(
        self,
        *,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        webhook_secret_grace_seconds: int | None = None,
    ) -> ProviderAccount:
        """Set the Razorpay account; the webhook secret rotates as with :meth:`put_stripe`."""
        body = _present(
            key_id=key_id,
            key_secret=key_secret,
            webhook_secret=webhook_secret,
            webhook_secret_grace_seconds=webhook_secret_grace_seconds,
        )
        data = await self._c.request("PUT", "/v1/providers/razorpay", body=body)
        return parse(ProviderAccount, data)

    async def list(self) -> ProviderAccountList:
        data = await self._c.request("GET", "/v1/providers")
        return [parse(ProviderAccount, item) for item in data["data"]]

    async def delete(self, provider: PaymentProvider) -> None:
        await self._c.request("DELETE", f"/v1/providers/{_seg(provider)}")


class AsyncPayments(_AsyncResource):
    """Top-ups paid through the project's Stripe or Razorpay account."""

    async def create(
        self,
        *,
        user_id: str,
        provider: PaymentProvider,
        amount: Amount,
        currency: str,
        credits: Amount | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Open a checkout for ``amount`` (major units of ``currency``); send the user to
        ``checkout_url``. The credits are granted once the provider reports the money paid.
        ``credits`` may be left out when the project has a ``credits_per_unit`` rate for the
        currency."""
        body = _present(
            user_id=user_id,
            provider=provider,
            amount=to_amount(amount),
            currency=currency,
            credits=_amount(credits),
            success_url=success_url,
            cancel_url=cancel_url,
            metadata=None if metadata is None else dict(metadata),
        )
        data = await self._c.request(
            "POST", "/v1/payments", body=body, idempotency_key=idempotency_key
        )
        return parse(Payment, data)

    async def get(self, payment_id: str) -> Payment:
        return parse(Payment, await self._c.request("GET", f"/v1/payments/{_seg(payment_id)}"))

    async def list(
        self,
        *,
        user_id: str | None = None,
        status: PaymentStatus | None = None,
        provider: PaymentProvider | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> Page[Payment]:
        params = {
            "user_id": user_id,
            "status": status,
            "provider": provider,
            "limit": limit,
            "starting_after": starting_after,
        }
        return parse_page(Payment, await self._c.request("GET", "/v1/payments", params=params))


class AsyncAdmin(_AsyncResource):
    """Operator endpoints: the client's api_key must be the server's CREDITD_ADMIN_TOKEN."""

    async def create_project(self, *, name: str) -> ProjectCreated:
        """Create a project and its first admin key (not idempotent: never retried once sent)."""
        data = await self._c.request(
            "POST", "/v1/admin/projects", body={"name": name}, idempotent=False
        )
        return parse(ProjectCreated, data)

    async def list_projects(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[Project]:
        params = {"limit": limit, "starting_after": starting_after}
        return parse_page(
            Project, await self._c.request("GET", "/v1/admin/projects", params=params)
        )

    async def get_project(self, project_id: str) -> Project:
        data = await self._c.request("GET", f"/v1/admin/projects/{_seg(project_id)}")
        return parse(Project, data)


class AsyncService(_AsyncResource):
    async def healthz(self) -> Health:
        return parse(Health, await self._c.request("GET", "/healthz"))

    async def metrics(self) -> str:
        """The Prometheus metrics, in text format."""
        response = await self._c._send("GET", "/metrics", content=None)
        return response.text

    async def readyz(self) -> Health:
        """Readiness (database reachable, schema at head); a 503 is returned, not raised."""
        response = await self._c._http.get("/readyz")
        return parse(Health, _decode(response))
