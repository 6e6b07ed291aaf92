from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, PrimaryKeyConstraint, Sequence, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, CreatedAt

# Draws events.seq (its server default). Declared on the metadata, not as the column's default:
# the database draws it, the ORM never asks for it.
EVENTS_SEQ = Sequence("events_seq", metadata=Base.metadata)


class Event(CreatedAt, Base):
    """The outbox: written in the same database transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_events_project_id_type_id", "project_id", "type", "id"),
        Index(
            "ix_events_fanout_xid_id",
            "fanout_xid",
            "id",
            postgresql_where=text("fanout_xid IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID]
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]]
    # The writing transaction's id (a default): the dispatcher fans events out in
    # (fanout_xid, id) order below the oldest running transaction. NULL: not fanned out.
    fanout_xid: Mapped[int | None] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint")
    )
    # Drawn as the event is written: under the account lock for balance changes, so it orders
    # one user's events as the changes happened. NULL for events written before migration 0008
    # (which added it without rewriting the table).
    seq: Mapped[int | None] = mapped_column(
        BigInteger, server_default=text("nextval('events_seq'::regclass)")
    )
