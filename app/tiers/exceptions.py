from app.core.errors import Conflict, InvalidRequest, NotFound


class TierNotFound(NotFound):
    slug = "tier_not_found"
    title = "No such tier"


class TierExists(Conflict):
    slug = "tier_exists"
    title = "A tier with this id already exists"


class TierInUse(Conflict):
    slug = "tier_in_use"
    title = "Users or plans still use this tier"


class InvalidRollover(InvalidRequest):
    title = "rollover_cap must be at least the tier's credits"
    loc = ("body", "rollover_cap")
