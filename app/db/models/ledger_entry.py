from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt


class LedgerEntry(CreatedAt, Base):
    """One immutable row per change of an account's ``total`` and/or ``held``.

    ``amount`` changes ``total``; ``held_amount`` changes ``held``. The ids come from a sequence
    drawn under the account lock, so per account they are in the order the changes happened.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_project_id_user_id_id", "project_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal]
    held_amount: Mapped[Decimal]
    total_after: Mapped[Decimal]
    held_after: Mapped[Decimal]
    transaction_id: Mapped[uuid.UUID | None]
    grant_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(Text)
