from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, PrimaryKeyConstraint, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Payment(Timestamps, Base):
    """Money a user pays through a provider: a top-up, or one subscription invoice/charge.

    The row is the lock point of everything that happens to the payment (webhooks, the
    reconciliation job): it is locked before the user's account. ``credits_granted`` and
    ``credits_clawed_back`` are what its grant received and what refunds/disputes took back.
    """

    __tablename__ = "payments"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_payments_project_id_user_id_id", "project_id", "user_id", "id"),
        # One payment per provider checkout (session, link, invoice) and per provider payment:
        # the same money can never be recorded (and so credited) twice.
        Index(
            "uq_payments_provider_reference",
            "project_id",
            "provider",
            "provider_reference",
            unique=True,
            postgresql_where=text("provider_reference IS NOT NULL"),
        ),
        Index(
            "uq_payments_provider_payment_id",
            "project_id",
            "provider",
            "provider_payment_id",
            unique=True,
            postgresql_where=text("provider_payment_id IS NOT NULL"),
        ),
        Index(
            "ix_payments_provider_order_id",
            "project_id",
            "provider",
            "provider_order_id",
            postgresql_where=text("provider_order_id IS NOT NULL"),
        ),
        Index(
            "ix_payments_reconcile",
            "reconcile_at",
            postgresql_where=text("status IN ('created', 'pending') AND reconcile_at IS NOT NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[uuid.UUID]
    user_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)  # "top_up" | "subscription"
    provider: Mapped[str] = mapped_column(Text)  # "stripe" | "razorpay"
    status: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal]  # major units, exactly representable in the currency
    currency: Mapped[str] = mapped_column(Text)  # ISO 4217, upper case
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[Decimal]
    checkout_url: Mapped[str | None] = mapped_column(Text)
    success_url: Mapped[str | None] = mapped_column(Text)
    cancel_url: Mapped[str | None] = mapped_column(Text)
    provider_reference: Mapped[str | None] = mapped_column(Text)  # cs_… / plink_… / in_…
    provider_payment_id: Mapped[str | None] = mapped_column(Text)  # pi_… / pay_…
    provider_order_id: Mapped[str | None] = mapped_column(Text)  # Razorpay order_…
    subscription_id: Mapped[uuid.UUID | None]
    grant_id: Mapped[uuid.UUID | None]
    credits_granted: Mapped[Decimal] = mapped_column(server_default="0")
    credits_clawed_back: Mapped[Decimal] = mapped_column(server_default="0")
    amount_refunded_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # None, or "inquiry" | "open" | "withdrawn" | "reinstated" | "won" | "lost"
    dispute_status: Mapped[str | None] = mapped_column(Text)
    dispute_amount_minor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    succeeded_at: Mapped[datetime | None]
    reconcile_at: Mapped[datetime | None]  # next lookup at the provider (reconciliation job)
    reconcile_attempts: Mapped[int] = mapped_column(server_default="0")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
