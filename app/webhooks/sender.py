"""One HTTP attempt of a webhook delivery, and what came of it.

The client runs on ``transport.GuardedTransport``: the host is resolved at every new
connection, every address checked (``ssrf.forbidden``), the TCP connection opened to the
checked address. Redirects are never followed, the whole attempt (connect, send, headers,
body) is bounded by ``timeout_seconds``, and at most ``response_excerpt_bytes`` of the body
are read. Environment proxies are ignored (``trust_env=False``): they could route around the guard.

``Outcome.error`` is short and never holds a URL, query string or secret: ``timeout``,
``connect_error``, ``tls_error``, ``dns_error``, ``protocol_error``, ``read_error``,
``write_error``, ``transport_error``, ``redirect`` (a 3xx, not followed) or
``refused: <reason>`` (the SSRF guard or the scheme rule; ``refused`` is then True).
"""

from __future__ import annotations

import asyncio
import codecs
import ssl
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import cast

import httpcore
import httpx

from app.core.clock import utcnow
from app.core.settings import WebhookSettings
from app.webhooks.transport import (
    GuardedBackend,
    GuardedTransport,
    Resolver,
    TargetRefused,
    TargetUnresolvable,
)

# A Retry-After beyond this is taken as this: a receiver cannot park a delivery for weeks
# (the retry schedule and disable_after_seconds still apply on top).
RETRY_AFTER_CAP_SECONDS = 86400.0
# Idle connections are kept this long for the next delivery to the same origin.
KEEPALIVE_SECONDS = 5.0


@dataclass(frozen=True)
class Outcome:
    ok: bool  # a 2xx answer
    status_code: int | None  # None: no HTTP answer (refused target, connect error, timeout)
    latency_ms: int
    excerpt: str | None  # the start of the response body
    error: str | None  # why there was no answer, or a short word on a non-2xx
    retry_after: float | None = None  # seconds, from Retry-After on a 429 or 503
    gone: bool = False  # 410: the receiver wants no more (the endpoint is disabled)
    refused: bool = False  # never sent: the target is forbidden (SSRF guard) or the scheme is


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds, at most RETRY_AFTER_CAP_SECONDS: delta-seconds or an HTTP date
    (None when absent or unusable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, (when - utcnow()).total_seconds()), RETRY_AFTER_CAP_SECONDS)


@cache
def user_agent() -> str:
    try:
        release = version("creditd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        release = "0"
    return f"creditd-webhooks/{release}"


class Sender:
    """Sends webhook attempts; one per dispatcher, closed with ``aclose``.

    ``resolver`` (host, port -> addresses), ``connector`` (an httpcore network backend whose
    ``connect_tcp`` gets the checked IP) and ``ssl_context`` are seams for tests.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._settings = settings
        backend = GuardedBackend(
            allow_private_targets=settings.allow_private_targets,
            resolver=resolver,
            connector=connector,
        )
        limits = httpx.Limits(
            max_connections=settings.max_in_flight,
            max_keepalive_connections=settings.max_in_flight,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(backend, ssl_context=ssl_context, limits=limits),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            headers={
                "user-agent": user_agent(),
                # Raw bytes only: a compressed body could inflate far past the excerpt bound.
                "accept-encoding": "identity",
            },
        )

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        """POST ``body`` to ``url`` once; never raises for anything the target does."""
        started = time.perf_counter()
        scheme_refusal = self._scheme_refusal(url)
        if scheme_refusal is not None:
            return _failure(started, f"refused: {scheme_refusal}", refused=True)
        deadline = asyncio.get_running_loop().time() + self._settings.timeout_seconds
        request = self._client.build_request(
            "POST", url, content=body, headers={**headers, "content-type": "application/json"}
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except TargetRefused as exc:
            return _failure(started, f"refused: {exc.reason}", refused=True)
        except TargetUnresolvable:
            return _failure(started, "dns_error")
        except (TimeoutError, httpx.TimeoutException):
            return _failure(started, "timeout")
        except httpx.ConnectError as exc:
            return _failure(started, "tls_error" if _caused_by_tls(exc) else "connect_error")
        except httpx.ProtocolError:
            return _failure(started, "protocol_error")
        except httpx.ReadError:
            return _failure(started, "read_error")
        except httpx.WriteError:
            return _failure(started, "write_error")
        except httpx.TransportError:
            return _failure(started, "transport_error")
        try:
            # A 2xx whose body then trickles still counts: the receiver has answered.
            excerpt = await self._excerpt(response, deadline)
        finally:
            await response.aclose()  # unread rest: httpcore drops the connection, reads nothing
        code = response.status_code
        retry = retry_after_seconds(response.headers.get("retry-after"))
        return Outcome(
            ok=200 <= code < 300,
            status_code=code,
            latency_ms=_ms(started),
            excerpt=excerpt,
            error="redirect" if 300 <= code < 400 else None,
            retry_after=retry if code in (429, 503) else None,
            gone=code == 410,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _scheme_refusal(self, url: str) -> str | None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            return "invalid url"
        if parsed.scheme == "https" or (parsed.scheme == "http" and self._settings.allow_http):
            return None if parsed.host else "no host"
        return f"scheme {parsed.scheme or 'missing'} not allowed"

    async def _excerpt(self, response: httpx.Response, deadline: float) -> str:
        """At most ``response_excerpt_bytes`` of the body, read until ``deadline`` at the latest
        (what arrived by then is kept: the status is the answer)."""
        limit = self._settings.response_excerpt_bytes
        chunks: list[bytes] = []
        size = 0
        if limit == 0:
            return ""
        try:
            # aiter_raw is an async generator (typed as an iterator): closed here, not by the GC.
            raw = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
            async with asyncio.timeout_at(deadline), aclosing(raw) as body:
                async for chunk in body:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= limit:
                        break
        except (TimeoutError, httpx.TransportError):
            pass
        # A character cut at the limit is dropped rather than shown as a replacement mark. NUL
        # cannot be stored in a text column: shown as a replacement mark.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(b"".join(chunks)[:limit], final=False).replace("\x00", "\ufffd")


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _failure(started: float, error: str, *, refused: bool = False) -> Outcome:
    return Outcome(
        ok=False,
        status_code=None,
        latency_ms=_ms(started),
        excerpt=None,
        error=error,
        refused=refused,
    )


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
