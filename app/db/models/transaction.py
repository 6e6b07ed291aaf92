from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Transaction(Timestamps, Base):
    """A usage transaction: a hold at start, a charge (or release) at completion.

    A transaction's own row lock guards its status, expiry and refunds; balance changes take
    the account's lock after it (lock order: transaction, then account).
    """

    __tablename__ = "transactions"
    __table_args__ = (
        # Tenant-leading primary key: serves lookups by id and tenant-scoped lists alike.
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_transactions_project_id_user_id_id", "project_id", "user_id", "id"),
        Index(
            "ix_transactions_pending_per_user",
            "project_id",
            "user_id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_transactions_pending_expiry",
            "expires_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(Text)  # on a team's account: the member
    team_id: Mapped[str | None] = mapped_column(Text)  # set when a team's account paid
    model: Mapped[str] = mapped_column(Text)
    feature_identifier: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    hold_amount: Mapped[Decimal]
    credits_used: Mapped[Decimal]
    refunded_total: Mapped[Decimal] = mapped_column(server_default="0")
    provisional_tokens: Mapped[dict[str, Any] | None]
    finalized_tokens: Mapped[dict[str, Any] | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    expires_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    late: Mapped[bool] = mapped_column(server_default="false")
    # SHA-256 of the canonical completion body: a re-completion is a replay only if it matches.
    completion_hash: Mapped[str | None] = mapped_column(Text)
    completion_result: Mapped[dict[str, Any] | None]
    # The effective price at start (after the tier's override and multiplier), which the
    # completion charges: a price changed or deleted meanwhile does not apply. NULL on rows
    # started before it existed (they are priced as of completion).
    price_snapshot: Mapped[dict[str, Any] | None]
    # A fixed-cost job's charge (POST /v1/usage with ``job``): ``model`` holds the job's name.
    job: Mapped[bool] = mapped_column(server_default="false")
