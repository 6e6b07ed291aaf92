"""idempotency_keys back to full pages: a key's row is now written once

Migration 0013 left 30 % of each page of ``idempotency_keys`` free for the in-flight row's
rewrite with the stored response. A keyed request now inserts its row once, response and all,
with its COMMIT (app/idempotency/repository.py); only the rare takeover of an expired key still
updates a row. The free room would only spread the table over more pages. Pages written from now
on are filled (the catalogue change takes SHARE UPDATE EXCLUSIVE: reads and writes go on).
``vacuum_truncate = false`` stays: the look-up that opens a keyed request must not wait behind
a truncation's ACCESS EXCLUSIVE lock.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 09:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE idempotency_keys RESET (fillfactor)")


def downgrade() -> None:
    op.execute("ALTER TABLE idempotency_keys SET (fillfactor = 70)")
