from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class Refund(CreatedAt, Base):
    """A (partial) refund of a completed transaction, paid back as a grant."""

    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_transaction_id", "transaction_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    transaction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("transactions.id"))
    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id"))
    amount: Mapped[Decimal]
    reason: Mapped[str | None] = mapped_column(Text)
