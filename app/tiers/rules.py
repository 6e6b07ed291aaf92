"""What a user's tier says about spending, read with the account lock in one statement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.core.money import ZERO

# Columns a locking query selects after ``LEFT JOIN tiers tr ON ...`` (NULLs without a tier).
TIER_COLUMNS = (
    "tr.allow_overage AS tier_allow_overage, tr.overage_limit AS tier_overage_limit, "
    "tr.price_multiplier AS tier_price_multiplier, tr.model_overrides AS tier_model_overrides, "
    "tr.max_concurrent_transactions AS tier_max_concurrent"
)


def tier_join(users_alias: str) -> str:
    """SQL joining the tier of the user row ``users_alias`` as ``tr``."""
    u = users_alias
    return f"LEFT JOIN tiers tr ON tr.project_id = {u}.project_id AND tr.id = {u}.tier_id"


@dataclass(frozen=True)
class Rules:
    allow_overage: bool = False
    overage_limit: Decimal | None = None
    price_multiplier: Decimal = Decimal(1)
    model_overrides: Mapping[str, Any] | None = None
    max_concurrent: int | None = None
    has_spend_caps: bool = False
    # A charge to a team's account by a member with team spend caps (checked under its lock).
    has_member_caps: bool = False
    # The user belongs to a team: starts on other accounts (their own, other teams) count
    # toward their spend caps and concurrency limit too, so those checks serialize per user.
    in_teams: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, has_spend_caps: bool = False) -> Rules:
        if row["tier_allow_overage"] is None:  # no tier
            return cls(has_spend_caps=has_spend_caps)
        return cls(
            allow_overage=row["tier_allow_overage"],
            overage_limit=row["tier_overage_limit"],
            price_multiplier=row["tier_price_multiplier"],
            model_overrides=row["tier_model_overrides"] or None,
            max_concurrent=row["tier_max_concurrent"],
            has_spend_caps=has_spend_caps,
        )

    @property
    def floor(self) -> Decimal | None:
        """The lowest available balance a start may leave; None = unlimited overage."""
        if not self.allow_overage:
            return ZERO
        return None if self.overage_limit is None else -self.overage_limit

    def override(self, model: str) -> Mapping[str, Any] | None:
        return None if self.model_overrides is None else self.model_overrides.get(model)
