"""Every event type creditd emits, and matching of endpoint subscriptions against them.

An endpoint subscribes to ``["*"]`` (everything), exact types (``"payment.succeeded"``) or
families (``"payment.*"``: every type starting with ``payment.``).
"""

from __future__ import annotations

import re

# STUB (issue 10 foundation): the catalogue with a data schema per type is to come; the names
# below are every type emitted at the time of writing.
TYPES: tuple[str, ...] = (
    "balance.low",
    "credits.debited",
    "credits.expired",
    "credits.expiring",
    "credits.granted",
    "payment.amount_mismatch",
    "payment.canceled",
    "payment.conflict",
    "payment.disputed",
    "payment.expired",
    "payment.failed",
    "payment.reconciliation_failed",
    "payment.refunded",
    "payment.succeeded",
    "payment.unclaimable",
    "promo.claimed",
    "spend_cap.exceeded",
    "subscription.activated",
    "subscription.canceled",
    "subscription.charge_not_granted",
    "subscription.created",
    "subscription.ended",
    "subscription.past_due",
    "subscription.renewed",
    "transaction.completed",
    "transaction.denied",
    "transaction.expired",
    "transaction.failed",
    "transaction.refunded",
    "transaction.started",
    "user.tier_changed",
    "webhook.test",
    "webhook_endpoint.disabled",
)

_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")


def valid_pattern(pattern: str) -> bool:
    """Well formed, and matching at least one type creditd emits."""
    if not _PATTERN.match(pattern):
        return False
    return any(matches(pattern, t) for t in TYPES)


def matches(pattern: str, type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return type.startswith(pattern[:-1])
    return pattern == type


def subscribed(patterns: list[str], type: str) -> bool:
    return any(matches(p, type) for p in patterns)


# The same rule in SQL, for the dispatcher's fan-out (``p`` a pattern, ``t`` a type).
SQL_MATCH = "(p = '*' OR p = t OR (right(p, 2) = '.*' AND left(t, length(p) - 1) = left(p, -1)))"
