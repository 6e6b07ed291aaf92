"""The export's line schema (documentation of the stream: lines are rendered by ``chain``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.money import Money

Hash = Annotated[str, Field(pattern="^[0-9a-f]{64}$", description="Lowercase hex SHA-256")]
_OPEN = ConfigDict(extra="allow")  # later versions may add members (e.g. team_id)


class LedgerExportEntry(BaseModel):
    """One ledger entry. `hash` = SHA-256(prev_hash + the line without prev_hash and hash)."""

    model_config = _OPEN

    object: Literal["ledger_entry"]
    id: int
    created_at: str = Field(
        description="RFC 3339 UTC with microseconds: YYYY-MM-DDTHH:MM:SS.ffffffZ"
    )
    user_id: str | None = Field(
        description="The user: the account's owner, or the member whose usage charged a team"
        " (null for a team's own grants, debits and expiries)"
    )
    team_id: str | None = Field(description="The team, when the entry is on a team's account")
    kind: str
    amount: Money = Field(description="Change of the account's total")
    held_amount: Money = Field(description="Change of the account's held credits")
    total_after: Money
    held_after: Money
    transaction_id: uuid.UUID | None
    grant_id: uuid.UUID | None
    reason: str | None
    prev_hash: Hash
    hash: Hash


class LedgerExportEnd(BaseModel):
    """The trailer of a complete export. A stream that ends without it was cut short:
    resume with `after` = the last entry's id and `prev_hash` = the last line's hash."""

    model_config = _OPEN

    object: Literal["ledger_export_end"]
    project_id: uuid.UUID
    since: str | None
    until: str | None
    horizon: str = Field(
        description="The export holds every entry with since <= created_at < horizon "
        "(after `after`); no entry dated before the horizon can still appear"
    )
    after: int | None
    entries: int = Field(description="Entry lines in this response")
    next_after: int | None = Field(description="`after` for the next export")
    prev_hash: Hash
    hash: Hash


LedgerExportLine = Annotated[LedgerExportEntry | LedgerExportEnd, Field(discriminator="object")]
