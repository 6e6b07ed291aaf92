from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Timestamps


class Project(Timestamps, Base):
    """A tenant: one product metering its own users."""

    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
