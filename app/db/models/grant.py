from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class Grant(CreatedAt, Base):
    """A unit in which credits arrive; charges burn ``remaining`` soonest-expiry first."""

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        CheckConstraint("category IN ('paid', 'promotional')", name="category_known"),
        # Burn order: soonest expiry (none last), promotional before paid, oldest first.
        Index(
            "ix_grants_burn_order",
            "account_id",
            text("expires_at ASC NULLS LAST"),
            text("(category = 'paid')"),
            "created_at",
            "id",
            postgresql_where=text("remaining > 0"),
        ),
        Index("ix_grants_project_id_user_id_id", "project_id", "user_id", "id"),
        Index(
            "ix_grants_project_id_team_id_id",
            "project_id",
            "team_id",
            "id",
            postgresql_where=text("team_id IS NOT NULL"),
        ),
        Index(
            "ix_grants_due_expiry",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND expired_at IS NULL"),
        ),
        # A payment credits its user once: at most one grant per payment, by construction.
        Index(
            "uq_grants_payment_id",
            "project_id",
            "payment_id",
            unique=True,
            postgresql_where=text("payment_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    # Null for a team's grants, except refunds of a member's charge (which name the member).
    user_id: Mapped[str | None] = mapped_column(Text)
    team_id: Mapped[str | None] = mapped_column(Text)  # set on a team account's grants
    amount: Mapped[Decimal]
    remaining: Mapped[Decimal]
    source: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    transaction_id: Mapped[uuid.UUID | None]
    expired_at: Mapped[datetime | None]  # set when the expiry worker removed the remainder
    expiry_notified_at: Mapped[datetime | None]  # "credits.expiring" sent
    category: Mapped[str] = mapped_column(Text, server_default="promotional")  # or "paid"
    payment_id: Mapped[uuid.UUID | None]  # the payment that bought it (paid grants)
    # What was paid for ``amount`` (cost basis = cost_amount / amount per credit), in
    # ``cost_currency``; None for promotional grants and paid ones of unknown price.
    cost_amount: Mapped[Decimal | None]
    cost_currency: Mapped[str | None] = mapped_column(Text)
