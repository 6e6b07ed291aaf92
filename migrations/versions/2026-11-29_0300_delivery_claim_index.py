"""pending webhook deliveries by endpoint, in due order

The dispatcher claims per endpoint with room (never scanning the whole due backlog of an
endpoint at its in-flight cap) and cancels the pending deliveries of disabled endpoints in
bounded batches: both walk one endpoint's pending deliveries in due order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 03:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_webhook_deliveries_pending_endpoint"
_WHERE = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index(
        _NAME,
        "webhook_deliveries",
        ["project_id", "endpoint_id", "next_attempt_at"],
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="webhook_deliveries", postgresql_where=_WHERE)
