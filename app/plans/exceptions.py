from app.core.errors import Conflict, NotFound
from app.providers.exceptions import ProviderNotConfigured

# Moved to the providers domain (payments raise it too); kept importable from here.
__all__ = [
    "PlanExists",
    "PlanInUse",
    "PlanInactive",
    "PlanNotFound",
    "ProviderNotConfigured",
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
