from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class Event(CreatedAt, Base):
    """The outbox: written in the same database transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_events_project_id_type_id", "project_id", "type", "id"),
    )

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]]
