from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class Refund(CreatedAt, Base):
    """A (partial) refund of a completed transaction, paid back as a grant."""

    __tablename__ = "refunds"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "transaction_id"], ["transactions.project_id", "transactions.id"]
        ),
        Index("ix_refunds_project_id_transaction_id", "project_id", "transaction_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    transaction_id: Mapped[uuid.UUID]
    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id"))
    amount: Mapped[Decimal]
    reason: Mapped[str | None] = mapped_column(Text)
