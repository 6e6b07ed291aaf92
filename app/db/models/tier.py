from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Tier(Timestamps, Base):
    """How a group of users gets credits (allocation, refills) and may spend them."""

    __tablename__ = "tiers"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        # At most one default tier per project.
        Index("uq_tiers_default", "project_id", unique=True, postgresql_where=text("is_default")),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    credits: Mapped[Decimal] = mapped_column(server_default="0")
    refill_interval: Mapped[str] = mapped_column(Text, server_default="none")
    refill_mode: Mapped[str] = mapped_column(Text, server_default="reset")
    rollover_cap: Mapped[Decimal | None]
    allow_overage: Mapped[bool] = mapped_column(server_default="false")
    overage_limit: Mapped[Decimal | None]
    price_multiplier: Mapped[Decimal] = mapped_column(server_default="1")
    model_overrides: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    max_concurrent_transactions: Mapped[int | None]
    features: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    is_default: Mapped[bool] = mapped_column(server_default="false")
