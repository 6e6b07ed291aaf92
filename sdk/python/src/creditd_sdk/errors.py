"""Exceptions: one class per problem ``code`` (slug) where it matters, else one per HTTP status.

Every error the server reports is an RFC 9457 problem; its fields are kept on the exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditd_sdk.models import StartResult
    from creditd_sdk.spool import SpoolEntry


class CreditdError(Exception):
    """Base of every error raised by this SDK; carries the problem+json fields when there is one."""

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        title: str | None = None,
        status: int | None = None,
        detail: str | None = None,
        instance: str | None = None,
        request_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.code = code
        self.title = title
        self.status = status
        self.detail = detail
        self.instance = instance
        self.request_id = request_id
        self.errors = errors
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status!r}, code={self.code!r}, {self.message!r})"


class APIConnectionError(CreditdError):
    """The request did not get an answer: connection refused or dropped, protocol error."""


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool)."""


class APIStatusError(CreditdError):
    """The server answered with an error status (a problem+json body, as a rule)."""


class BadRequest(APIStatusError):
    """400: malformed request."""


class Unauthorized(APIStatusError):
    """401: missing, unknown, revoked or expired API key (or operator token)."""


class InsufficientCredits(APIStatusError):
    """402 ``insufficient_credits``: the balance does not cover the amount."""


class Forbidden(APIStatusError):
    """403: the key lacks the scope, or X-Project-Id does not match it."""


class NotFound(APIStatusError):
    """404: no such object in this project (another project's objects look missing too)."""


class Conflict(APIStatusError):
    """409: the request conflicts with the object's state."""


class PayloadTooLarge(APIStatusError):
    """413: the body is over the size limit."""


class ValidationError(APIStatusError):
    """422 ``validation_error`` (and other payload problems such as ``unknown_model``).

    ``errors`` lists each problem with its ``loc``.
    """


class RateLimited(APIStatusError):
    """429 ``rate_limited``; ``retry_after`` is the server's Retry-After in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed; nothing is known to have changed."""


class ServiceUnavailable(ServerError):
    """503: a transient condition (database restart, lock timeout); nothing was changed."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


# --- specific problem codes -------------------------------------------------------------------


class IdempotencyKeyReused(Conflict):
    """409 ``idempotency_key_reused``: the key was used for a different request."""


class IdempotencyKeyInFlight(Conflict):
    """409 ``idempotency_key_in_flight``: the first request with this key is still running."""


class TransactionAlreadyCompleted(Conflict):
    """409 ``transaction_already_completed``: completed before with a different body."""


class TransactionDenied(Conflict):
    """409 ``transaction_denied``: a denied transaction cannot be completed."""


class TransactionNotPending(Conflict):
    """409 ``transaction_not_pending``: only a pending transaction can be extended."""


class TransactionNotCompleted(Conflict):
    """409 ``transaction_not_completed``: only a completed transaction can be refunded."""


class OverRefund(Conflict):
    """409 ``over_refund``: refunds would exceed what was charged."""


class UserExists(Conflict):
    """409 ``user_exists``."""


class TransactionNotFound(NotFound):
    """404 ``transaction_not_found``."""


class UserNotFound(NotFound):
    """404 ``user_not_found``."""


class UnknownModel(ValidationError):
    """422 ``unknown_model``: neither the model nor ``_default`` has a price."""


class PromoIneligible(Conflict):
    """409 with the eligibility reason as code (``promo_expired``, ``already_claimed``, ...)."""


class ProviderNotConfigured(Conflict):
    """409 ``provider_not_configured``: the project has no account for that payment provider."""


_BY_CODE: dict[str, type[APIStatusError]] = {
    "insufficient_credits": InsufficientCredits,
    "validation_error": ValidationError,
    "rate_limited": RateLimited,
    "idempotency_key_reused": IdempotencyKeyReused,
    "idempotency_key_in_flight": IdempotencyKeyInFlight,
    "transaction_already_completed": TransactionAlreadyCompleted,
    "transaction_denied": TransactionDenied,
    "transaction_not_pending": TransactionNotPending,
    "transaction_not_completed": TransactionNotCompleted,
    "over_refund": OverRefund,
    "user_exists": UserExists,
    "transaction_not_found": TransactionNotFound,
    "user_not_found": UserNotFound,
    "unknown_model": UnknownModel,
    "provider_not_configured": ProviderNotConfigured,
    **dict.fromkeys(
        (
            "promo_inactive",
            "promo_not_started",
            "promo_expired",
            "promo_exhausted",
            "already_claimed",
            "not_eligible",
        ),
        PromoIneligible,
    ),
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status: int, code: str | None) -> type[APIStatusError]:
    """The class for a problem: by code where a specific class exists, else by status."""
    cls = _BY_CODE.get(code or "")
    if cls is not None:
        return cls
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIStatusError


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def from_response(status: int, headers: Mapping[str, str], body: Any) -> APIStatusError:
    """Build the exception for an error response (``body`` is the parsed JSON, if any)."""
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    code = problem.get("code")
    if not isinstance(code, str):
        slug = problem.get("type")
        code = slug.rsplit("/", 1)[-1] if isinstance(slug, str) and "/" in slug else None
    cls = error_class(status, code)
    detail = problem.get("detail")
    title = problem.get("title")
    message = f"{status} {code or 'error'}: {detail or title or 'no detail'}"
    request_id = problem.get("request_id") or headers.get("x-request-id")
    errors = problem.get("errors")
    kw: dict[str, Any] = {
        "type": problem.get("type"),
        "code": code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": problem.get("instance"),
        "request_id": request_id,
        "errors": errors if isinstance(errors, list) else None,
        "body": body,
        "headers": headers,
    }
    if issubclass(cls, RateLimited | ServiceUnavailable):
        kw["retry_after"] = parse_retry_after(headers.get("retry-after"))
    return cls(message, **kw)


# --- raised by the SDK itself -----------------------------------------------------------------


class NotAdmitted(CreditdError):
    """``capture_usage`` was refused at start (``continue: false``); the body did not run.

    ``reason`` is ``insufficient_credits``, ``spend_cap_reached`` or ``concurrency_limit``;
    ``result`` is the start response.
    """

    def __init__(self, result: StartResult) -> None:
        reason = result.reason or "not_admitted"
        super().__init__(f"not admitted: {reason}: {result.message}", code=reason)
        self.reason = reason
        self.result = result


class CreditsNotAdmitted(NotAdmitted, InsufficientCredits):
    """Not admitted for lack of credits; also an :class:`InsufficientCredits`."""


class SpendCapReached(NotAdmitted):
    """Not admitted: a spend cap with action ``deny`` would be exceeded."""


class ConcurrencyLimited(NotAdmitted):
    """Not admitted: the tier's ``max_concurrent_transactions`` are already open."""


def not_admitted(result: StartResult) -> NotAdmitted:
    cls = {
        "insufficient_credits": CreditsNotAdmitted,
        "spend_cap_reached": SpendCapReached,
        "concurrency_limit": ConcurrencyLimited,
    }.get(result.reason or "", NotAdmitted)
    return cls(result)


class CompletionSpooled(CreditdError):
    """A completion could not be delivered now and is kept in the durable spool.

    It is replayed with its original Idempotency-Key by ``flush_spool()`` (also tried
    automatically before later calls); ``cause`` is the error that prevented delivery.
    """

    def __init__(self, entry: SpoolEntry, cause: CreditdError) -> None:
        super().__init__(
            f"completion of {entry.transaction_id} spooled for later delivery: {cause.message}",
            status=cause.status,
            code=cause.code,
        )
        self.entry = entry
        self.cause = cause
