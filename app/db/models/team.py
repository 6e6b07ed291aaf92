from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Team(Timestamps, Base):
    """A shared balance: one account that several users (its members) draw from."""

    __tablename__ = "teams"
    __table_args__ = (PrimaryKeyConstraint("project_id", "id"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(Text)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), unique=True)
    name: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    deleted_at: Mapped[dt.datetime | None]


class TeamMember(Timestamps, Base):
    """A user allowed to charge a team's account. Rows are deleted when the member leaves."""

    __tablename__ = "team_members"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "team_id", "user_id"),
        ForeignKeyConstraint(
            ["project_id", "team_id"], ["teams.project_id", "teams.id"], ondelete="CASCADE"
        ),
        CheckConstraint("role IN ('owner', 'member')", name="role_known"),
        # "The user's teams" (the only_team default, a deleted user leaving every team).
        Index("ix_team_members_project_id_user_id", "project_id", "user_id"),
    )

    project_id: Mapped[uuid.UUID]
    team_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)


class TeamMemberSpendCap(Timestamps, Base):
    """A deny limit on what one member may charge a team's account in a UTC day or month."""

    __tablename__ = "team_member_spend_caps"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "team_id", "user_id", "period"),
        ForeignKeyConstraint(
            ["project_id", "team_id", "user_id"],
            ["team_members.project_id", "team_members.team_id", "team_members.user_id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("period IN ('day', 'month')", name="period_known"),
    )

    project_id: Mapped[uuid.UUID]
    team_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    period: Mapped[str] = mapped_column(Text)
    limit: Mapped[Decimal]


class UsageTeamDaily(Base):
    """Credits charged to team accounts per team, member and UTC day: written by the charge's
    own statement (only for team charges), read by member caps and analytics by team/member."""

    __tablename__ = "usage_team_daily"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "team_id", "user_id", "day"),
        Index("ix_usage_team_daily_project_id_day", "project_id", "day"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    day: Mapped[dt.date] = mapped_column(Date)
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    transactions: Mapped[int] = mapped_column(server_default="0")
