"""When and how long to wait before retrying a request."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from creditd_sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    IdempotencyKeyInFlight,
    RateLimited,
    ServiceUnavailable,
)

# Never sent to the server: safe to retry whatever the request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Possibly sent: safe to retry an idempotent request (every POST carries an Idempotency-Key).
_RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server's Retry-After wins when it gives one."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based): equal jitter over base * 2**retry."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**retry)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    def transport_delay(
        self, exc: httpx.TransportError, retry: int, *, idempotent: bool
    ) -> float | None:
        """Seconds to wait before retrying after a network error, or None to give up."""
        if retry >= self.max_retries:
            return None
        if isinstance(exc, _NOT_SENT) or (idempotent and isinstance(exc, _RETRYABLE_TRANSPORT)):
            return self.backoff(retry)
        return None

    def status_delay(self, err: APIStatusError, retry: int, *, idempotent: bool) -> float | None:
        """Seconds to wait before retrying an error response, or None to give up.

        429 and 503 promise that nothing changed; 502/504 (from a proxy) do not, so they are
        retried only for idempotent requests.
        """
        if retry >= self.max_retries:
            return None
        if isinstance(err, IdempotencyKeyInFlight):
            return self.backoff(retry)
        if err.status not in _RETRYABLE_STATUS:
            return None
        if not idempotent and err.status in (502, 504):
            return None
        retry_after = err.retry_after if isinstance(err, RateLimited | ServiceUnavailable) else None
        if retry_after is None:
            return self.backoff(retry)
        if retry_after > self.max_retry_after:
            return None  # the server asks for longer than we are willing to wait
        return retry_after


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
