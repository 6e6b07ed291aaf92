from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class Allocation(CreatedAt, Base):
    """One periodic grant (tier refill or subscription period) per user, source and period.

    The primary key is the guarantee: a second grant for the same period cannot be inserted,
    whatever the number of workers or crashes.
    """

    __tablename__ = "allocations"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "user_id", "source", "source_ref", "period_start"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)  # "tier" | "subscription"
    source_ref: Mapped[str] = mapped_column(Text)  # the tier id or subscription id
    period_start: Mapped[datetime]
    grant_id: Mapped[uuid.UUID | None]
