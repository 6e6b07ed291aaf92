from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, PrimaryKeyConstraint, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class ProviderAccount(Timestamps, Base):
    """A project's own Stripe or Razorpay account. Secrets are stored only encrypted
    (``app/core/secrets.py``); ``hints`` holds their masked forms for display."""

    __tablename__ = "provider_accounts"
    __table_args__ = (PrimaryKeyConstraint("project_id", "provider"),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(Text)  # "stripe" | "razorpay"
    # JSON of the API credentials ({"secret_key"} or {"key_id", "key_secret"}), encrypted.
    credentials_ciphertext: Mapped[str] = mapped_column(Text)
    webhook_secret_ciphertext: Mapped[str] = mapped_column(Text)
    # The webhook secret that was replaced, still verifying until it expires (rotation grace).
    previous_webhook_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_webhook_secret_expires_at: Mapped[datetime | None]
    hints: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
