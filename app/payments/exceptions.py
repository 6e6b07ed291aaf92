"""Payment errors: validation of a top-up, the provider's answers, webhook refusals."""

from __future__ import annotations

from app.core.errors import AppError, Conflict, InvalidRequest, NotFound, ServiceUnavailable


class PaymentNotFound(NotFound):
    slug = "payment_not_found"
    title = "No such payment"


class UnknownCurrency(InvalidRequest):
    title = "currency is not an ISO 4217 currency that can be paid in"
    loc = ("body", "currency")


class AmountNotPayable(InvalidRequest):
    title = "amount is not an exact, positive amount of the currency's minor units"
    loc = ("body", "amount")


class CreditsRequired(InvalidRequest):
    title = "credits is required unless the project sets credits_per_unit for this currency"
    loc = ("body", "credits")


class InvalidCredits(InvalidRequest):
    title = "credits (amount x credits_per_unit) must be positive with at most 15 integer digits"
    loc = ("body", "credits")


class ProviderUnavailable(ServiceUnavailable):
    """The provider timed out, failed or rate-limited us: nothing was stored, retry later."""

    slug = "provider_unavailable"
    title = "The payment provider is temporarily unavailable"
    retry_after = 5


class ProviderFailed(AppError):
    """The provider refused the request (bad credentials, an invalid parameter)."""

    slug = "provider_error"
    title = "The payment provider refused the request"
    status = 502


class WebhookNotConfigured(AppError):
    # One answer for an unknown project and a project without this provider: a caller
    # learns nothing about which projects exist.
    slug = "webhook_not_configured"
    title = "No webhook secret is configured for this provider in this project"
    status = 400


class InvalidWebhookSignature(AppError):
    slug = "invalid_signature"
    title = "The webhook signature did not verify"
    status = 400


class MalformedWebhookBody(AppError):
    slug = "malformed_webhook"
    title = "The webhook verified but is not an event this provider sends"
    status = 400


class ProviderNotConfiguredDoc(Conflict):
    """Documentation only: raised as ``app.providers.exceptions.ProviderNotConfigured``.

    TODO(integrator): document that class instead (it does not exist on this branch).
    """

    slug = "provider_not_configured"
    title = "The project has not configured this payment provider"
