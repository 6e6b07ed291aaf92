"""teams: shared accounts, members with roles and spend caps, team usage rollup

A team owns one account (the accounts table); its members charge it. Ledger entries, grants
and transactions of a team's account carry ``team_id``; ``user_id`` names the member who
charged it and is null on team-level entries (grants, debits, expiry): DROP NOT NULL only
changes the catalog. The new partial indexes hold no rows of existing data, but building them
still reads all of ``ledger_entries`` and ``grants`` under a SHARE lock that makes every balance
change wait. Alembic runs a migration in a transaction, where CREATE INDEX CONCURRENTLY is not
allowed: on large tables, do this by hand first, outside a transaction::

    ALTER TABLE ledger_entries ADD COLUMN IF NOT EXISTS team_id text;
    ALTER TABLE grants ADD COLUMN IF NOT EXISTS team_id text;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_ledger_entries_project_id_team_id_id
        ON ledger_entries (project_id, team_id, id) WHERE team_id IS NOT NULL;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_grants_project_id_team_id_id
        ON grants (project_id, team_id, id) WHERE team_id IS NOT NULL;

The columns and indexes are made IF NOT EXISTS here, so the migration keeps them. (A failed
concurrent build leaves an INVALID index of that name: drop it and build it again first.)

The downgrade refuses to run while any team exists or any row names one: team-level ledger
entries have no user, and dropping them would break the ledger of every team account.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 12:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEAM = sa.text("team_id IS NOT NULL")
_MONEY = sa.Numeric(38, 6, asdecimal=True)
_TS = sa.DateTime(timezone=True)


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", _TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", _TS, server_default=sa.text("now()"), nullable=False),
    ]


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "teams",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("deleted_at", _TS, nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_teams_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_teams_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_teams")),
        sa.UniqueConstraint("account_id", name=op.f("uq_teams_account_id")),
    )
    op.create_table(
        "team_members",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("role IN ('owner', 'member')", name=op.f("ck_team_members_role_known")),
        sa.ForeignKeyConstraint(
            ["project_id", "team_id"],
            ["teams.project_id", "teams.id"],
            name=op.f("fk_team_members_project_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "team_id", "user_id", name=op.f("pk_team_members")),
    )
    op.create_index("ix_team_members_project_id_user_id", "team_members", ["project_id", "user_id"])
    op.create_table(
        "team_member_spend_caps",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("limit", _MONEY, nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "period IN ('day', 'month')", name=op.f("ck_team_member_spend_caps_period_known")
        ),
        sa.ForeignKeyConstraint(
            ["project_id", "team_id", "user_id"],
            ["team_members.project_id", "team_members.team_id", "team_members.user_id"],
            name=op.f("fk_team_member_spend_caps_project_id_team_members"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "team_id", "user_id", "period", name=op.f("pk_team_member_spend_caps")
        ),
    )
    op.create_table(
        "usage_team_daily",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("credits", _MONEY, server_default="0", nullable=False),
        sa.Column("transactions", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_usage_team_daily_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "team_id", "user_id", "day", name=op.f("pk_usage_team_daily")
        ),
    )
    op.create_index("ix_usage_team_daily_project_id_day", "usage_team_daily", ["project_id", "day"])
    for table in ("transactions", "ledger_entries", "grants"):
        # IF NOT EXISTS: an operator may have added it to build the index beforehand (above).
        op.add_column(table, sa.Column("team_id", sa.Text(), nullable=True), if_not_exists=True)
    op.alter_column("ledger_entries", "user_id", existing_type=sa.Text(), nullable=True)
    op.alter_column("grants", "user_id", existing_type=sa.Text(), nullable=True)
    op.create_index(
        "ix_ledger_entries_project_id_team_id_id",
        "ledger_entries",
        ["project_id", "team_id", "id"],
        postgresql_where=_TEAM,
        if_not_exists=True,  # an operator may have built it CONCURRENTLY beforehand (above)
    )
    op.create_index(
        "ix_grants_project_id_team_id_id",
        "grants",
        ["project_id", "team_id", "id"],
        postgresql_where=_TEAM,
        if_not_exists=True,
    )


_TEAM_DATA = """
    SELECT EXISTS (SELECT 1 FROM teams)
        OR EXISTS (SELECT 1 FROM ledger_entries WHERE team_id IS NOT NULL)
        OR EXISTS (SELECT 1 FROM grants WHERE team_id IS NOT NULL)
        OR EXISTS (SELECT 1 FROM transactions WHERE team_id IS NOT NULL)
"""


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_index("ix_grants_project_id_team_id_id", table_name="grants", postgresql_where=_TEAM)
    op.drop_index(
        "ix_ledger_entries_project_id_team_id_id",
        table_name="ledger_entries",
        postgresql_where=_TEAM,
    )
    # The ledger is append-only: team-level rows (no user) cannot survive NOT NULL, and their
    # accounts would no longer reconcile without them. Refuse rather than delete money.
    if op.get_bind().execute(sa.text(_TEAM_DATA)).scalar():
        raise RuntimeError(
            "teams exist (or rows of team accounts): downgrading below 0010 would drop their"
            " ledger; delete the teams' data deliberately first, or stay on this revision"
        )
    op.alter_column("grants", "user_id", existing_type=sa.Text(), nullable=False)
    op.alter_column("ledger_entries", "user_id", existing_type=sa.Text(), nullable=False)
    for table in ("grants", "ledger_entries", "transactions"):
        op.drop_column(table, "team_id")
    op.drop_index("ix_usage_team_daily_project_id_day", table_name="usage_team_daily")
    op.drop_table("usage_team_daily")
    op.drop_table("team_member_spend_caps")
    op.drop_index("ix_team_members_project_id_user_id", table_name="team_members")
    op.drop_table("team_members")
    op.drop_table("teams")
