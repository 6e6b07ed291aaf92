"""Provider account errors, and the answers of a provider call (payments and plans raise
them alike)."""

from app.core.errors import AppError, Conflict, NotFound, ServiceUnavailable


class ProviderNotConfigured(Conflict):
    slug = "provider_not_configured"
    title = "The payment provider is not configured for this project"


class ProviderNotFound(NotFound):
    slug = "provider_not_found"
    title = "This payment provider is not configured for this project"


class ProviderUnavailable(ServiceUnavailable):
    """The provider timed out, failed or rate-limited us: nothing was stored; a retry (same
    ``Idempotency-Key``) is safe."""

    slug = "provider_unavailable"
    title = "The payment provider is temporarily unavailable"
    retry_after = 5


class ProviderFailed(AppError):
    """The provider refused the request (bad credentials, an unknown price or plan id)."""

    slug = "provider_error"
    title = "The payment provider refused the request"
    status = 502
