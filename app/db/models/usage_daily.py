from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import Date, ForeignKey, Index, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class UsageDaily(Base):
    """Charged credits per UTC day, user, model and feature: kept up to date by every charge
    (a write carried in the same statement), read by spend caps and analytics."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "day", "user_id", "model", "feature"),
        Index("ix_usage_daily_project_id_user_id_day", "project_id", "user_id", "day"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    user_id: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    feature: Mapped[str] = mapped_column(Text)  # '' when the usage had no feature_identifier
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    transactions: Mapped[int] = mapped_column(server_default="0")
