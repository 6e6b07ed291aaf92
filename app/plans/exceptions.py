from app.core.errors import AppError, Conflict, NotFound, ServiceUnavailable


class PlanNotFound(NotFound):
    slug = "plan_not_found"
    title = "No such plan"


class PlanExists(Conflict):
    slug = "plan_exists"
    title = "A plan with this id already exists"


class PlanInUse(Conflict):
    slug = "plan_in_use"
    title = "The plan still has subscriptions that have not ended"


class PlanInactive(Conflict):
    slug = "plan_inactive"
    title = "The plan is inactive and cannot be subscribed to"


class SubscriptionNotFound(NotFound):
    slug = "subscription_not_found"
    title = "No such subscription"


class SubscriptionExists(Conflict):
    slug = "subscription_exists"
    title = "The user already has a subscription that has not ended"


class ProviderNotConfigured(Conflict):
    """Same slug as ``app.providers.exceptions.ProviderNotConfigured`` (what the router
    really raises): kept here so the plans routes document it."""

    slug = "provider_not_configured"
    title = "This payment provider is not configured for the project"


class PlanNotAvailable(Conflict):
    """The plan has no price at the asked provider (``stripe_price_id`` /
    ``razorpay_plan_id`` unset), so there is nothing to check out."""

    slug = "plan_not_available"
    title = "The plan is not offered through this payment provider"


class ProviderUnavailable(ServiceUnavailable):
    """The provider could not be reached or answered 5xx/429: nothing was created; a retry
    (same ``Idempotency-Key``) is safe."""

    slug = "provider_unavailable"
    title = "The payment provider is unavailable; retry later"
    retry_after = 5


class ProviderFailed(AppError):
    """The provider refused the call (bad credentials, an unknown price or plan id)."""

    slug = "provider_error"
    title = "The payment provider refused the request"
    status = 502
