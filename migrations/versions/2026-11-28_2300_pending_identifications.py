"""provider events remember an identification that arrived before its payment

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 23:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("provider_events", sa.Column("reference", sa.Text(), nullable=True))
    op.add_column("provider_events", sa.Column("provider_payment_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_provider_events_pending_reference",
        "provider_events",
        ["project_id", "provider", "reference"],
        unique=False,
        postgresql_where=sa.text("outcome = 'unmatched' AND reference IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_provider_events_pending_reference",
        table_name="provider_events",
        postgresql_where=sa.text("outcome = 'unmatched' AND reference IS NOT NULL"),
    )
    op.drop_column("provider_events", "provider_payment_id")
    op.drop_column("provider_events", "reference")
