"""Room on each page for HOT updates of the rows the hot path rewrites; no vacuum truncation of
idempotency_keys

Every keyed request inserts its ``idempotency_keys`` row as in flight and then rewrites it with
the stored response; every charge rewrites the user's ``accounts`` row and, on completion, its
``usage_daily`` row. None of those updates changes an indexed column, so PostgreSQL can write
the new version on the same page without touching any index (a HOT update) - when the page has
room. Tables filled to 100 % leave none once they grow, and each update then also inserts into
every index of the table. A fill factor keeps that room on pages written from now on.

``ALTER TABLE ... SET (fillfactor)`` changes only the catalogue (SHARE UPDATE EXCLUSIVE:
reads and writes go on); existing pages get the room as they are rewritten or vacuumed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 09:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILL = {"idempotency_keys": 70, "accounts": 80, "usage_daily": 80}


def upgrade() -> None:
    for table, percent in FILL.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")
    # A key's claim waits briefly for locks (app/idempotency/repository.py); (auto)vacuum's
    # truncation of empty trailing pages takes an ACCESS EXCLUSIVE lock: not on this table.
    op.execute("ALTER TABLE idempotency_keys SET (vacuum_truncate = false)")


def downgrade() -> None:
    op.execute("ALTER TABLE idempotency_keys RESET (vacuum_truncate)")
    for table in FILL:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
