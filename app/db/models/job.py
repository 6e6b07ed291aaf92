from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Job(Timestamps, Base):
    """A fixed-cost job: ``POST /v1/usage`` with ``job`` charges ``price`` per unit."""

    __tablename__ = "jobs"
    __table_args__ = (PrimaryKeyConstraint("project_id", "name"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal]
