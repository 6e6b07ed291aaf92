"""provider events are also unique by the SHA-256 of their raw body

Razorpay's event id header is not covered by its signature: a signed body re-posted under a
new event id is the same delivery and must be a duplicate.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 23:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("body_sha256 IS NOT NULL")


def upgrade() -> None:
    # Nullable: events stored before this have no hash and are never rehashed.
    op.add_column("provider_events", sa.Column("body_sha256", sa.LargeBinary(), nullable=True))
    op.create_index(
        "uq_provider_events_body_sha256",
        "provider_events",
        ["project_id", "provider", "body_sha256"],
        unique=True,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index(
        "uq_provider_events_body_sha256", table_name="provider_events", postgresql_where=_WHERE
    )
    op.drop_column("provider_events", "body_sha256")
