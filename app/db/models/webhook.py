from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt, Timestamps


class WebhookEndpoint(Timestamps, Base):
    """A URL of a project's that receives its events, signed per Standard Webhooks.

    Secrets are stored only encrypted (``app/core/secrets.py``). After a rotation the replaced
    secret keeps signing (a second ``v1,`` signature) until ``previous_secret_expires_at``.
    ``failing_since`` is the start of the current run of failures (NULL after any success).
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (PrimaryKeyConstraint("project_id", "id"),)

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # "*", exact types ("payment.succeeded") or prefixes ("payment.*").
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)  # manual | gone | failing
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    previous_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")


class WebhookDelivery(Timestamps, Base):
    """One event owed to one endpoint. ``pending`` rows are due at ``next_attempt_at``; a
    dispatcher claiming one pushes ``next_attempt_at`` past its lease and sets ``lease_token``,
    so a dispatcher that dies mid-attempt leaves it due again once the lease runs out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "event_id", "endpoint_id"),
        ForeignKeyConstraint(
            ["project_id", "endpoint_id"],
            ["webhook_endpoints.project_id", "webhook_endpoints.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["project_id", "event_id"], ["events.project_id", "events.id"], ondelete="CASCADE"
        ),
        Index(
            "ix_webhook_deliveries_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_project_id_endpoint_id", "project_id", "endpoint_id"),
        # The claim and the sweep of disabled endpoints: one endpoint's pending deliveries in
        # due order (migration 0009).
        Index(
            "ix_webhook_deliveries_pending_endpoint",
            "project_id",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(
        Text, server_default="pending"
    )  # + succeeded|failed|canceled
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime | None]
    lease_token: Mapped[uuid.UUID | None]
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]


class WebhookAttempt(CreatedAt, Base):
    """One HTTP request of a delivery and what came back (or why nothing did)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        ForeignKeyConstraint(
            ["project_id", "delivery_id"],
            ["webhook_deliveries.project_id", "webhook_deliveries.id"],
            ondelete="CASCADE",
        ),
        Index("ix_webhook_attempts_project_id_endpoint_id_id", "project_id", "endpoint_id", "id"),
        Index("ix_webhook_attempts_project_id_delivery_id", "project_id", "delivery_id"),
    )

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID]
    delivery_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    attempt: Mapped[int]
    status_code: Mapped[int | None]
    latency_ms: Mapped[int]
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool]
    next_attempt_at: Mapped[datetime | None]  # the retry this failure scheduled, if any


class WebhookFanoutCursor(Base):
    """One row: the dispatcher has fanned out every event up to (fanout_xid, event_id)."""

    __tablename__ = "webhook_fanout_cursor"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    fanout_xid: Mapped[int] = mapped_column(BigInteger, server_default="0")
    event_id: Mapped[uuid.UUID | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
