"""ledger_entries: created_at stamped as the row is written; the export's keyset index

``ledger_entries.created_at`` defaults to ``clock_timestamp()`` (read as the row is built, right
before it is inserted) instead of ``now()`` (the writing transaction's start). The ledger
export's horizon then only has to wait for transactions that hold an xid, i.e. have written:
an idle open transaction no longer holds it back (README "Ledger export", "Completeness").
``SET DEFAULT`` changes only the catalogue: existing rows keep their timestamps (``now()`` of
their transaction, never later than the clock when they were written, so they stay sound).

``ix_ledger_entries_project_id_created_at_id`` serves the export's keyset batches
(``project_id = $1 AND (created_at, id) > ($4, $5) ORDER BY created_at, id LIMIT n``): an index
range scan of n rows instead of a scan and sort of the project's whole ledger per batch. It
costs every ledger write one more index insertion (bench/RESULTS.md "Ledger export").

Building it reads the whole table under a SHARE lock that makes writes wait (about 0.6 s per
million entries on the bench machine). Alembic runs each migration in a transaction, where
CREATE INDEX CONCURRENTLY is not allowed; on a large ``ledger_entries`` table, build it by hand
first, outside a transaction::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_ledger_entries_project_id_created_at_id
        ON ledger_entries (project_id, created_at, id);

The index is created IF NOT EXISTS here, so the migration keeps it. (A failed concurrent build
leaves an INVALID index of that name: drop it and build it again first.)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_ledger_entries_project_id_created_at_id"


def upgrade() -> None:
    # While ALTER TABLE waits for its lock on ledger_entries, every balance change queues
    # behind it: fail fast and run the migration again.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.alter_column("ledger_entries", "created_at", server_default=sa.text("clock_timestamp()"))
    op.create_index(
        _INDEX,
        "ledger_entries",
        ["project_id", "created_at", "id"],
        unique=False,
        if_not_exists=True,  # an operator may have built it CONCURRENTLY beforehand (above)
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_index(_INDEX, table_name="ledger_entries")
    op.alter_column("ledger_entries", "created_at", server_default=sa.text("now()"))
