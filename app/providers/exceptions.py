from app.core.errors import Conflict, NotFound


class ProviderNotConfigured(Conflict):
    slug = "provider_not_configured"
    title = "The payment provider is not configured for this project"


class ProviderNotFound(NotFound):
    slug = "provider_not_found"
    title = "This payment provider is not configured for this project"
