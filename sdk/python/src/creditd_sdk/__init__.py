"""creditd-sdk: the official Python client for creditd.

``Creditd`` (sync) and ``AsyncCreditd`` (async) cover the whole HTTP API with typed models;
amounts are exact ``Decimal`` both ways. ``capture_usage`` meters a model call; completions that
cannot be delivered wait in a durable spool and are replayed until they land.
``CreditdMiddleware`` (ASGI) and ``@metered`` run a whole request or call in a usage transaction;
the code inside reports its usage with ``add_usage``/``add_llm_usage``.
"""

from __future__ import annotations

from creditd_sdk import errors
from creditd_sdk._async_client import AsyncCreditd, AsyncUsageCapture
from creditd_sdk._compat import current
from creditd_sdk._sync_client import Creditd, UsageCapture
from creditd_sdk._version import __version__
from creditd_sdk.asgi import CreditdMiddleware
from creditd_sdk.capture import (
    NoActiveCapture,
    RequestCapture,
    add_llm_usage,
    add_usage,
    current_transaction,
    metered,
)
from creditd_sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BadRequest,
    CompletionSpooled,
    ConcurrencyLimited,
    Conflict,
    CreditdError,
    CreditsNotAdmitted,
    Forbidden,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientCredits,
    NotAdmitted,
    NotFound,
    OverRefund,
    PayloadTooLarge,
    PromoIneligible,
    ProviderNotConfigured,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    SpendCapReached,
    TransactionAlreadyCompleted,
    TransactionDenied,
    TransactionNotCompleted,
    TransactionNotFound,
    TransactionNotPending,
    Unauthorized,
    UnknownModel,
    UserExists,
    UserNotFound,
    ValidationError,
)
from creditd_sdk.models import NOT_GIVEN, Page, Tokens
from creditd_sdk.spool import FileSpool, FlushResult, MemorySpool, Spool, SpoolEntry


def current_capture() -> UsageCapture | AsyncUsageCapture | None:
    """The innermost running ``capture_usage`` (block or decorated call), to call ``set_usage``."""
    capture: UsageCapture | AsyncUsageCapture | None = current.get()
    return capture


__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncCreditd",
    "AsyncUsageCapture",
    "BadRequest",
    "CompletionSpooled",
    "ConcurrencyLimited",
    "Conflict",
    "Creditd",
    "CreditdError",
    "CreditdMiddleware",
    "CreditsNotAdmitted",
    "FileSpool",
    "FlushResult",
    "Forbidden",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
    "InsufficientCredits",
    "MemorySpool",
    "NoActiveCapture",
    "NotAdmitted",
    "NotFound",
    "OverRefund",
    "Page",
    "PayloadTooLarge",
    "PromoIneligible",
    "ProviderNotConfigured",
    "RateLimited",
    "RequestCapture",
    "ServerError",
    "ServiceUnavailable",
    "SpendCapReached",
    "Spool",
    "SpoolEntry",
    "Tokens",
    "TransactionAlreadyCompleted",
    "TransactionDenied",
    "TransactionNotCompleted",
    "TransactionNotFound",
    "TransactionNotPending",
    "Unauthorized",
    "UnknownModel",
    "UsageCapture",
    "UserExists",
    "UserNotFound",
    "ValidationError",
    "__version__",
    "add_llm_usage",
    "add_usage",
    "current_capture",
    "current_transaction",
    "errors",
    "metered",
]
