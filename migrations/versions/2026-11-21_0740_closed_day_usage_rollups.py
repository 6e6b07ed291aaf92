"""closed-day usage rollups (per user and day, per user and week, per model and day)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 07:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _usage_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("credits", sa.Numeric(precision=38, scale=6), server_default="0", nullable=False),
        sa.Column("transactions", sa.Integer(), server_default="0", nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_user_days",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        *_usage_columns(),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_usage_user_days_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "day", "user_id", name=op.f("pk_usage_user_days")),
    )
    op.create_table(
        "usage_user_weeks",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        *_usage_columns(),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_usage_user_weeks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "week", "user_id", name=op.f("pk_usage_user_weeks")),
    )
    op.create_table(
        "usage_model_days",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        *_usage_columns(),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_usage_model_days_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "day", "model", "feature", name=op.f("pk_usage_model_days")
        ),
    )
    op.create_table(
        "usage_rollup",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("closed_through", sa.Date(), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_usage_rollup_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollup")),
    )
    # The one row; no day is closed yet, so analytics read usage_daily until the worker runs.
    op.execute("INSERT INTO usage_rollup (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("usage_rollup")
    op.drop_table("usage_model_days")
    op.drop_table("usage_user_weeks")
    op.drop_table("usage_user_days")
