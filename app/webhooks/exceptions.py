"""Errors of the outbound webhooks API."""

from __future__ import annotations

from app.core.errors import Conflict, InvalidRequest, NotFound


class WebhookEndpointNotFound(NotFound):
    slug = "webhook_endpoint_not_found"
    title = "No such webhook endpoint"


class WebhookEndpointDisabled(Conflict):
    slug = "webhook_endpoint_disabled"
    title = "The webhook endpoint is disabled"


class WebhookEndpointLimit(Conflict):
    slug = "webhook_endpoint_limit"
    title = "The project has as many webhook endpoints as it may have"


class InvalidWebhookUrl(InvalidRequest):
    """A URL creditd will not call: its detail says which rule it breaks."""

    slug = "invalid_webhook_url"
    title = "The URL cannot be a webhook endpoint"
    loc = ("body", "url")
