from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class ModelPrice(Timestamps, Base):
    """Prices in credits per 1,000 tokens (and per request), or a pricing ``expression`` over
    the usage metrics (app.pricing.expressions); ``_default`` is the fallback."""

    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint(
            "(expression IS NULL AND input_price_per_1k IS NOT NULL"
            " AND output_price_per_1k IS NOT NULL) OR (expression IS NOT NULL"
            " AND input_price_per_1k IS NULL AND output_price_per_1k IS NULL)",
            name="one_price_form",
        ),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    input_price_per_1k: Mapped[Decimal | None]
    output_price_per_1k: Mapped[Decimal | None]
    cached_input_price_per_1k: Mapped[Decimal | None]
    request_price: Mapped[Decimal] = mapped_column(server_default="0")
    expression: Mapped[str | None] = mapped_column(Text)
