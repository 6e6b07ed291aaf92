"""Payment errors: validation of a top-up, the provider's answers, webhook refusals."""

from __future__ import annotations

from app.core.errors import AppError, InvalidRequest, NotFound
from app.providers.exceptions import ProviderFailed, ProviderNotConfigured, ProviderUnavailable

__all__ = ["ProviderFailed", "ProviderNotConfigured", "ProviderUnavailable"]  # re-exported


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


class SuccessUrlRequired(InvalidRequest):
    title = "success_url is required: Stripe Checkout sends the payer back there"
    loc = ("body", "success_url")


def require_success_url(provider: str, success_url: str | None) -> None:
    """422 before any provider call: hosted Stripe Checkout has nowhere to send the payer."""
    if provider == "stripe" and not success_url:
        raise SuccessUrlRequired()


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
