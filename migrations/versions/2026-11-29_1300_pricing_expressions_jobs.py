"""pricing expressions, fixed-cost jobs, the price snapshot of a transaction

``models.expression``: a model is priced either per 1K tokens (as before) or by an expression
over the usage metrics; a CHECK keeps exactly one form. The per-1K columns become nullable
(DROP NOT NULL changes only the catalogue). ``jobs``: fixed prices by name.
``transactions.price_snapshot`` (the effective price written at start, charged at completion)
and ``transactions.job`` are added without rewriting the table: a nullable column, and a
constant default (stored in the catalogue since PostgreSQL 11). The CHECK on ``models`` reads
that small table once.

Downgrade deletes the expression-priced models (the old schema cannot hold them).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 11:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ONE_FORM = (
    "(expression IS NULL AND input_price_per_1k IS NOT NULL AND output_price_per_1k IS NOT NULL)"
    " OR (expression IS NOT NULL AND input_price_per_1k IS NULL AND output_price_per_1k IS NULL)"
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("models", sa.Column("expression", sa.Text(), nullable=True))
    op.alter_column("models", "input_price_per_1k", nullable=True)
    op.alter_column("models", "output_price_per_1k", nullable=True)
    op.create_check_constraint("one_price_form", "models", _ONE_FORM)
    op.create_table(
        "jobs",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(precision=38, scale=6), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_jobs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "name", name=op.f("pk_jobs")),
    )
    op.add_column(
        "transactions",
        sa.Column("price_snapshot", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "transactions",
        sa.Column("job", sa.Boolean(), server_default="false", nullable=False),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_column("transactions", "job")
    op.drop_column("transactions", "price_snapshot")
    op.drop_table("jobs")
    op.drop_constraint("one_price_form", "models", type_="check")
    op.execute("DELETE FROM models WHERE expression IS NOT NULL")
    op.alter_column("models", "output_price_per_1k", nullable=False)
    op.alter_column("models", "input_price_per_1k", nullable=False)
    op.drop_column("models", "expression")
