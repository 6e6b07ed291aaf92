from app.core.errors import Conflict, NotFound
from app.providers.exceptions import ProviderFailed, ProviderNotConfigured, ProviderUnavailable

# The provider errors live in the providers domain (payments raise them too); they are
# re-exported here for the plans routes.
__all__ = [
    "PlanExists",
    "PlanInUse",
    "PlanInactive",
    "PlanNotAvailable",
    "PlanNotFound",
    "ProviderFailed",
    "ProviderNotConfigured",
    "ProviderUnavailable",
    "SubscriptionExists",
    "SubscriptionNotFound",
]


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


class PlanNotAvailable(Conflict):
    """The plan has no price at the asked provider (``stripe_price_id`` /
    ``razorpay_plan_id`` unset), so there is nothing to check out."""

    slug = "plan_not_available"
    title = "The plan is not offered through this payment provider"
