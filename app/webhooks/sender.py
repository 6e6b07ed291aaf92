"""One HTTP attempt of a webhook delivery, and what came of it.

SKELETON (issue 10 foundation): the interface is final — ``Sender.send`` and ``Outcome`` — the
implementation is to be hardened: the SSRF-guarded transport (resolve, check every address,
connect to the checked one), a hard total timeout, a bounded response read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from app.core.clock import utcnow
from app.core.settings import WebhookSettings


@dataclass(frozen=True)
class Outcome:
    ok: bool  # a 2xx answer
    status_code: int | None  # None: no HTTP answer (refused target, connect error, timeout)
    latency_ms: int
    excerpt: str | None  # the start of the response body
    error: str | None  # why there was no answer, or a short word on a non-2xx
    retry_after: float | None = None  # seconds, from Retry-After on a 429 or 503
    gone: bool = False  # 410: the receiver wants no more (the endpoint is disabled)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (None when absent or unusable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


class Sender:
    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            headers={"user-agent": "creditd-webhooks/1"},
        )

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.perf_counter()
        try:
            response = await self._client.post(
                url, content=body, headers={**headers, "content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return Outcome(False, None, _ms(started), None, type(exc).__name__)
        code = response.status_code
        excerpt = response.text[: self._settings.response_excerpt_bytes]
        retry = retry_after_seconds(response.headers.get("retry-after"))
        return Outcome(
            ok=200 <= code < 300,
            status_code=code,
            latency_ms=_ms(started),
            excerpt=excerpt,
            error=None,
            retry_after=retry if code in (429, 503) else None,
            gone=code == 410,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
