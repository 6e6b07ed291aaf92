"""idempotency keys without a project foreign key: operator requests use the nil project scope

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 18:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(
        "fk_idempotency_keys_project_id_projects", "idempotency_keys", type_="foreignkey"
    )


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE project_id NOT IN (SELECT id FROM projects)")
    op.create_foreign_key(
        "fk_idempotency_keys_project_id_projects",
        "idempotency_keys",
        "projects",
        ["project_id"],
        ["id"],
        ondelete="CASCADE",
    )
