from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Account(Timestamps, Base):
    """The balance of one user (later: shared by a team): the single lock point of every change.

    ``total`` = credits owned (sum of grant remainders minus ``debt``); ``held`` = open holds.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("held >= 0", name="held_non_negative"),
        CheckConstraint("debt >= 0", name="debt_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    total: Mapped[Decimal] = mapped_column(server_default="0")
    held: Mapped[Decimal] = mapped_column(server_default="0")
    debt: Mapped[Decimal] = mapped_column(server_default="0")
    # Set when its user is deleted. Locking statements require it NULL: PostgreSQL re-checks
    # that on the locked row after a lock wait, so nothing moves money on a deleted user.
    closed_at: Mapped[datetime | None]
