"""outbound webhooks: endpoints, deliveries, attempts, the fan-out cursor; event sequence

``events.fanout_xid`` is the id of the transaction that wrote the event (a default, so no
writer changes): the dispatcher fans events out in (fanout_xid, id) order, only below the
oldest transaction still running, so an event committed late is never skipped. NULL means
"not for fan-out" (events written before this revision, and events aimed at one endpoint).
``events.seq`` is drawn (from the sequence ``events_seq``) when the event is written, under the
lock of the user's account for every balance change, so per user it orders events as the
changes happened. Events written before this revision keep a NULL ``seq``.

Nothing here rewrites ``events`` (the hot table every balance change writes to): both columns
are added nullable and without a default, which only changes the catalogue, and their defaults
are set afterwards, so they apply to new rows only. The one slow step is building
``ix_events_fanout_xid_id``: it holds nothing yet (every existing row has a NULL fanout_xid) but
still reads the whole table, under a SHARE lock that makes writes wait. Alembic runs each
migration in a transaction, where CREATE INDEX CONCURRENTLY is not allowed; on a large
``events`` table, do that step by hand first, outside a transaction::

    ALTER TABLE events ADD COLUMN IF NOT EXISTS fanout_xid bigint;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_events_fanout_xid_id ON events (fanout_xid, id)
        WHERE fanout_xid IS NOT NULL;

The column and the index are made IF NOT EXISTS here, so the migration keeps both. (A failed
concurrent build leaves an INVALID index of that name: drop it and build it again first.)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 00:40:00.000000+00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FANOUT_PENDING = sa.text("fanout_xid IS NOT NULL")
_DUE = sa.text("status = 'pending'")


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
    ]  # fmt: skip


def upgrade() -> None:
    # Tighter than env.py's 10 s: while ALTER TABLE waits for its lock on events, every balance
    # change queues behind it. Failing fast and running the migration again is cheaper.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # IF NOT EXISTS: an operator may have added it to build the index beforehand (above).
    op.add_column(
        "events", sa.Column("fanout_xid", sa.BigInteger(), nullable=True), if_not_exists=True
    )
    op.alter_column(
        "events", "fanout_xid", server_default=sa.text("(pg_current_xact_id()::text)::bigint")
    )
    op.execute("CREATE SEQUENCE events_seq AS bigint")
    op.add_column("events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.alter_column("events", "seq", server_default=sa.text("nextval('events_seq'::regclass)"))
    op.execute("ALTER SEQUENCE events_seq OWNED BY events.seq")
    op.create_index(
        "ix_events_fanout_xid_id",
        "events",
        ["fanout_xid", "id"],
        unique=False,
        postgresql_where=_FANOUT_PENDING,
        if_not_exists=True,  # an operator may have built it CONCURRENTLY beforehand (above)
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("secret_ciphertext", sa.Text(), nullable=False),
        sa.Column("previous_secret_ciphertext", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default="{}",
            nullable=False,
        ),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"],
            name=op.f("fk_webhook_endpoints_project_id_projects"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_webhook_endpoints")),
    )  # fmt: skip
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["project_id", "endpoint_id"],
            ["webhook_endpoints.project_id", "webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_project_id_webhook_endpoints"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id", "event_id"], ["events.project_id", "events.id"],
            name=op.f("fk_webhook_deliveries_project_id_events"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "project_id", "event_id", "endpoint_id",
            name=op.f("uq_webhook_deliveries_project_id"),
        ),
    )  # fmt: skip
    op.create_index(
        "ix_webhook_deliveries_next_attempt_at",
        "webhook_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=_DUE,
    )
    op.create_index(
        "ix_webhook_deliveries_project_id_endpoint_id",
        "webhook_deliveries",
        ["project_id", "endpoint_id"],
        unique=False,
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["project_id", "delivery_id"],
            ["webhook_deliveries.project_id", "webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_project_id_webhook_deliveries"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_webhook_attempts")),
    )  # fmt: skip
    op.create_index(
        "ix_webhook_attempts_project_id_endpoint_id_id",
        "webhook_attempts",
        ["project_id", "endpoint_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_attempts_project_id_delivery_id",
        "webhook_attempts",
        ["project_id", "delivery_id"],
        unique=False,
    )
    # One row: how far the dispatcher has fanned events out to endpoints.
    op.create_table(
        "webhook_fanout_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fanout_xid", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_webhook_fanout_cursor_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_fanout_cursor")),
    )  # fmt: skip
    op.execute("INSERT INTO webhook_fanout_cursor (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("webhook_fanout_cursor")
    op.drop_index("ix_webhook_attempts_project_id_delivery_id", table_name="webhook_attempts")
    op.drop_index("ix_webhook_attempts_project_id_endpoint_id_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_project_id_endpoint_id", table_name="webhook_deliveries")
    op.drop_index(
        "ix_webhook_deliveries_next_attempt_at",
        table_name="webhook_deliveries",
        postgresql_where=_DUE,
    )
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_events_fanout_xid_id", table_name="events", postgresql_where=_FANOUT_PENDING)
    op.drop_column("events", "seq")  # drops events_seq too (owned by the column)
    op.execute("DROP SEQUENCE IF EXISTS events_seq")
    op.drop_column("events", "fanout_xid")
