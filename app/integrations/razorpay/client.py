"""Calls into the official ``razorpay`` SDK (synchronous, ``requests``-based), off the event loop.

Every call gets a fresh ``razorpay.Client`` on a fresh ``requests.Session``: neither is
documented as thread-safe, and calls run on anyio's worker threads, so nothing is shared
between two of them. Building a client is cheap next to the HTTPS round trip it makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
import razorpay
import razorpay.errors
import requests

from app.integrations.base import Credentials, ProviderError

T = TypeVar("T")


class _Session(requests.Session):
    """Gives every request a timeout (the SDK sets none, so a stalled API would hold a worker
    thread forever) and keeps the last response's status: the SDK's errors drop it, and a 429
    or a 5xx (retry later) must be told apart from a 4xx (the request itself is wrong)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.last_status: int | None = None

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        self.last_status = None
        response = super().request(method, url, *args, **kwargs)
        self.last_status = response.status_code
        return response


def _transient_status(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


def to_provider_error(exc: Exception, status: int | None) -> ProviderError | None:
    """The ``ProviderError`` an SDK failure stands for; ``None`` for a bug of ours (re-raised)."""
    if isinstance(exc, razorpay.errors.BadRequestError):
        # Razorpay answers 400/401 and (so far) 429 with code BAD_REQUEST_ERROR.
        transient = status == 429 or (status is not None and status >= 500)
        return ProviderError(
            f"razorpay refused the request: {exc}", transient=transient, status=status
        )
    if isinstance(exc, razorpay.errors.GatewayError | razorpay.errors.ServerError):
        # The SDK also raises ServerError for any error body it does not recognise, 4xx included.
        return ProviderError(
            f"razorpay failed: {exc}", transient=_transient_status(status), status=status
        )
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        # A body that is not JSON: a proxy's or load balancer's error page, usually a 502/503.
        return ProviderError(
            "razorpay answered with a body that is not JSON",
            transient=_transient_status(status),
            status=status,
        )
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return ProviderError(f"razorpay unreachable: {type(exc).__name__}", transient=True)
    if isinstance(exc, requests.exceptions.RequestException):
        # InvalidURL, MissingSchema, …: the configured API base is wrong; retrying will not help.
        return ProviderError(f"razorpay request failed: {type(exc).__name__}", transient=False)
    return None


async def call(creds: Credentials, op: Callable[[Any], T]) -> T:
    """Run ``op(client)`` on a worker thread; SDK and network failures become ``ProviderError``."""
    if not creds.key_id:
        raise ProviderError("razorpay credentials have no key_id", transient=False)
    key_id = creds.key_id

    def run() -> T:
        with _Session(creds.timeout_seconds) as session:
            options: dict[str, Any] = {"base_url": creds.api_base} if creds.api_base else {}
            client = razorpay.Client(session=session, auth=(key_id, creds.secret_key), **options)
            try:
                return op(client)
            except Exception as exc:
                error = to_provider_error(exc, session.last_status)
                if error is None:
                    raise
                raise error from exc

    return await anyio.to_thread.run_sync(run)
