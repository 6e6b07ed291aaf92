from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class User(Timestamps, Base):
    """A project's end customer, addressed by the project's own id."""

    __tablename__ = "users"
    __table_args__ = (
        Index(
            "ix_users_next_refill_at",
            "next_refill_at",
            postgresql_where=text("next_refill_at IS NOT NULL AND deleted_at IS NULL"),
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", deferrable=True, initially="DEFERRED"), unique=True
    )
    tier_id: Mapped[str | None] = mapped_column(Text)
    # Refills are anchored at the tier assignment; the worker claims users by next_refill_at.
    tier_assigned_at: Mapped[datetime | None]
    next_refill_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    deleted_at: Mapped[datetime | None]
