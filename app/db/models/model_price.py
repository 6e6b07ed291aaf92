from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class ModelPrice(Timestamps, Base):
    """Prices in credits per 1,000 tokens (and per request); ``_default`` is the fallback."""

    __tablename__ = "models"

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    input_price_per_1k: Mapped[Decimal]
    output_price_per_1k: Mapped[Decimal]
    cached_input_price_per_1k: Mapped[Decimal | None]
    request_price: Mapped[Decimal] = mapped_column(server_default="0")
