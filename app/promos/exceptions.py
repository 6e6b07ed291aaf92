"""Promo errors. Every eligibility reason is also an error slug (claim answers it as such)."""

from __future__ import annotations

from app.core.errors import Conflict, InvalidRequest, NotFound


class PromoNotFound(NotFound):
    slug = "promo_not_found"
    title = "No such promo code"


class PromoExists(Conflict):
    slug = "promo_exists"
    title = "A promo with this code already exists (codes are case-insensitive)"


class MaxRedemptionsBelowCount(Conflict):
    slug = "max_redemptions_below_count"
    title = "max_redemptions cannot be set below the promo's current redemptions_count"


class InvalidPromoWindow(InvalidRequest):
    title = "expires_at must be after starts_at"
    loc = ("body", "expires_at")


class PromoInactive(Conflict):
    slug = "promo_inactive"
    title = "The promo is not active"


class PromoNotStarted(Conflict):
    slug = "promo_not_started"
    title = "The promo has not started yet"


class PromoExpired(Conflict):
    slug = "promo_expired"
    title = "The promo has expired"


class PromoExhausted(Conflict):
    slug = "promo_exhausted"
    title = "The promo has no redemptions left"


class AlreadyClaimed(Conflict):
    slug = "already_claimed"
    title = "The user has already claimed this promo as often as allowed"


class NotEligible(Conflict):
    slug = "not_eligible"
    title = "The user is not eligible for this promo"


# The 409 a claim answers for each reason (promo_not_found is a 404 of its own).
INELIGIBLE: dict[str, type[Conflict]] = {
    e.slug: e
    for e in (
        PromoInactive,
        PromoNotStarted,
        PromoExpired,
        PromoExhausted,
        AlreadyClaimed,
        NotEligible,
    )
}
