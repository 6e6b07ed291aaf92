from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
)
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


class UsageUserDay(Base):
    """Charged credits per closed UTC day and user: ``usage_daily`` summed over models and
    features once the day is over (see app/analytics/rollup.py). Analytics by user read it."""

    __tablename__ = "usage_user_days"
    __table_args__ = (PrimaryKeyConstraint("project_id", "day", "user_id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    user_id: Mapped[str] = mapped_column(Text)
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    transactions: Mapped[int] = mapped_column(server_default="0")


class UsageUserWeek(Base):
    """Charged credits per closed ISO week (Monday to Sunday, UTC) and user: the week's
    ``usage_user_days`` rows summed when its Sunday closes. Long windows by user read whole
    weeks from here and only their ragged ends from the day table."""

    __tablename__ = "usage_user_weeks"
    __table_args__ = (PrimaryKeyConstraint("project_id", "week", "user_id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    week: Mapped[dt.date] = mapped_column(Date)  # its Monday
    user_id: Mapped[str] = mapped_column(Text)
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    transactions: Mapped[int] = mapped_column(server_default="0")


class UsageModelDay(Base):
    """Charged credits per closed UTC day, model and feature: ``usage_daily`` summed over users
    once the day is over. Analytics by model, feature and day and the summary totals read it."""

    __tablename__ = "usage_model_days"
    __table_args__ = (PrimaryKeyConstraint("project_id", "day", "model", "feature"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    day: Mapped[dt.date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(Text)
    feature: Mapped[str] = mapped_column(Text)
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    transactions: Mapped[int] = mapped_column(server_default="0")


class UsageRollup(Base):
    """The one row saying which UTC days are closed: every day up to ``closed_through`` is in
    the per-user and per-model day tables, and every week ending by then in the per-user week
    table (null: none yet)."""

    __tablename__ = "usage_rollup"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    closed_through: Mapped[dt.date | None] = mapped_column(Date)
    closed_at: Mapped[dt.datetime | None]
