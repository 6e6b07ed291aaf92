from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Plan(Timestamps, Base):
    """A recurring offer: a price per interval, credits per period, optionally a tier."""

    __tablename__ = "plans"
    __table_args__ = (PrimaryKeyConstraint("project_id", "id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    price_amount: Mapped[Decimal]
    price_currency: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    credits_per_period: Mapped[Decimal]
    tier_id: Mapped[str | None] = mapped_column(Text)
    stripe_price_id: Mapped[str | None] = mapped_column(Text)
    razorpay_plan_id: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(server_default="true")
