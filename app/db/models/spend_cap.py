from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class SpendCap(Timestamps, Base):
    """A per-user limit on credits spent in a UTC day or month, optionally for one model.

    ``model`` is '' for a cap over every model (part of the key, so it cannot be NULL).
    """

    __tablename__ = "spend_caps"
    __table_args__ = (PrimaryKeyConstraint("project_id", "user_id", "period", "model"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text)
    period: Mapped[str] = mapped_column(Text)  # "day" | "month"
    model: Mapped[str] = mapped_column(Text, server_default="")
    limit: Mapped[Decimal]
    action: Mapped[str] = mapped_column(Text)  # "deny" | "warn"
