"""Seeding many ledger entries fast, and reading an export (shared by tests and the bench)."""

from __future__ import annotations

import uuid
from typing import Any

# n entries on the user's account, +1/-1 alternately (the account's total is unchanged, so
# `creditd verify` holds), created_at spread over the last n milliseconds in an order unlike the
# ids' (every 7th entry is dated a little earlier than its predecessors).
SEED = """
    INSERT INTO ledger_entries (project_id, account_id, user_id, kind, amount, held_amount,
                                total_after, held_after, reason, created_at)
    SELECT u.project_id, u.account_id, u.id, 'adjustment',
           CASE WHEN g % 2 = 1 THEN 1 ELSE -1 END, 0, a.total + g % 2, a.held,
           CASE WHEN g % 3 = 0 THEN 'seed "' || g || E'"\\n' END,
           now() - make_interval(secs => ($3 - g + (g % 7) * 3) / 1000.0)
    FROM users u JOIN accounts a ON a.id = u.account_id, generate_series(1, $3::int) AS g
    WHERE u.project_id = $1 AND u.id = $2
"""


async def seed(conn: Any, project_id: str | uuid.UUID, user_id: str, n: int) -> None:
    """Append ``n`` entries for an existing user with a zero balance and nothing held."""
    await conn.execute(SEED, uuid.UUID(str(project_id)), user_id, n)
