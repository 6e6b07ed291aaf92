from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Subscription(Timestamps, Base):
    """A user's subscription to a plan; a provider (manual, Stripe, Razorpay) drives it."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_subscriptions_project_id_user_id", "project_id", "user_id"),
        # At most one running (not ended) subscription per user, enforced by the database.
        Index(
            "uq_subscriptions_running_per_user",
            "project_id",
            "user_id",
            unique=True,
            postgresql_where=text("ended_at IS NULL"),
        ),
        Index(
            "ix_subscriptions_renewal",
            "current_period_end",
            postgresql_where=text("status = 'active' AND provider = 'manual'"),
        ),
        Index(
            "uq_subscriptions_provider_ref",
            "provider",
            "provider_subscription_id",
            unique=True,
            postgresql_where=text("provider_subscription_id IS NOT NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[uuid.UUID]
    user_id: Mapped[str] = mapped_column(Text)
    plan_id: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(server_default="false")
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    provider_subscription_id: Mapped[str | None] = mapped_column(Text)
    provider_customer_id: Mapped[str | None] = mapped_column(Text)
    # The checkout that starts a provider subscription (Stripe cs_…); the user pays there.
    provider_reference: Mapped[str | None] = mapped_column(Text)
    checkout_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
