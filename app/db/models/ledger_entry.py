from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class LedgerEntry(Base):
    """One immutable row per change of an account's ``total`` and/or ``held``.

    ``amount`` changes ``total``; ``held_amount`` changes ``held``. The ids come from a sequence
    drawn under the account lock, so per account they are in the order the changes happened.
    ``created_at`` is the clock when the row was built (``clock_timestamp()``), not the
    transaction's start: the ledger export's horizon relies on it (app/ledger/repository.py).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_project_id_user_id_id", "project_id", "user_id", "id"),
        # The ledger export's keyset batches (app/ledger/repository.py EXPORT_BATCH).
        Index("ix_ledger_entries_project_id_created_at_id", "project_id", "created_at", "id"),
        Index(
            "ix_ledger_entries_project_id_team_id_id",
            "project_id",
            "team_id",
            "id",
            postgresql_where=text("team_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    # The user whose account changed; on a team account the member who charged it (null for
    # team-level changes: grants, debits, expiry).
    user_id: Mapped[str | None] = mapped_column(Text)
    team_id: Mapped[str | None] = mapped_column(Text)  # set on a team account's entries
    kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal]
    held_amount: Mapped[Decimal]
    total_after: Mapped[Decimal]
    held_after: Mapped[Decimal]
    transaction_id: Mapped[uuid.UUID | None]
    grant_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.clock_timestamp())
