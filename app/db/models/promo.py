from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt, Timestamps


class Promo(Timestamps, Base):
    """A promo code (stored lower-case: codes are case-insensitive)."""

    __tablename__ = "promos"
    __table_args__ = (PrimaryKeyConstraint("project_id", "code"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(Text)
    credits: Mapped[Decimal]
    description: Mapped[str | None] = mapped_column(Text)
    max_redemptions: Mapped[int | None]
    max_per_user: Mapped[int] = mapped_column(server_default="1")
    starts_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    eligible_tier_ids: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    eligible_user_ids: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    new_users_only: Mapped[bool] = mapped_column(server_default="false")
    credit_expires_in_days: Mapped[int | None]
    active: Mapped[bool] = mapped_column(server_default="true")
    redemptions_count: Mapped[int] = mapped_column(server_default="0")
    deleted_at: Mapped[datetime | None]


class PromoRedemption(CreatedAt, Base):
    __tablename__ = "promo_redemptions"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_promo_redemptions_code_user", "project_id", "code", "user_id"),
        Index("ix_promo_redemptions_code_id", "project_id", "code", "id"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[uuid.UUID]
    code: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    grant_id: Mapped[uuid.UUID]
