from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, PrimaryKeyConstraint, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class ProviderEvent(CreatedAt, Base):
    """A verified webhook from a provider, stored once per (project, provider, event id) in the
    same transaction as its effect: a redelivery finds it and changes nothing."""

    __tablename__ = "provider_events"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "provider", "event_id"),
        # The pending identifications a payment recorded later looks for (by its reference).
        Index(
            "ix_provider_events_pending_reference",
            "project_id",
            "provider",
            "reference",
            postgresql_where=text("outcome = 'unmatched' AND reference IS NOT NULL"),
        ),
        # A second key: Razorpay's event id header is not signed, so a captured body re-posted
        # under a new id is caught by its hash.
        Index(
            "uq_provider_events_body_sha256",
            "project_id",
            "provider",
            "body_sha256",
            unique=True,
            postgresql_where=text("body_sha256 IS NOT NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    # "applied" | "ignored" | "unmatched" | "amount_mismatch" | "stale" | "conflict"
    # | "not_granted"
    outcome: Mapped[str] = mapped_column(Text)
    payment_id: Mapped[uuid.UUID | None]
    subscription_id: Mapped[uuid.UUID | None]
    payload: Mapped[dict[str, Any]]
    # Set on an identification (PaymentIdentified) that arrived before its payment existed:
    # the payment recorded later under ``reference`` claims ``provider_payment_id``.
    reference: Mapped[str | None] = mapped_column(Text)
    provider_payment_id: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the raw body as received (NULL on events stored before migration 0007).
    body_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
