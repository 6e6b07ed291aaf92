"""SQL for the usage rollup (``usage_daily``) that spend caps and analytics read."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from app.db.writes import Write

_ADD_USAGE = """
    INSERT INTO usage_daily AS u (project_id, day, user_id, model, feature, credits, transactions)
    VALUES ($1, ($2::timestamptz AT TIME ZONE 'UTC')::date, $3, $4, $5, $6, $7)
    ON CONFLICT (project_id, day, user_id, model, feature) DO UPDATE
    SET credits = u.credits + EXCLUDED.credits,
        transactions = u.transactions + EXCLUDED.transactions
"""


def add_usage(
    *,
    project_id: uuid.UUID,
    at: datetime,
    user_id: str,
    model: str,
    feature: str | None,
    credits: Decimal,
    transactions: int = 1,
) -> Write:
    """Count a charge (or, with a negative amount and no transaction, a refund) in its UTC day;
    carried in the statement that makes the charge."""
    return Write(_ADD_USAGE, (project_id, at, user_id, model, feature or "", credits, transactions))
