from __future__ import annotations

from app.core.errors import InvalidRequest, NotFound


class LedgerEntryNotFound(NotFound):
    slug = "ledger_entry_not_found"
    title = "No such ledger entry"


class EmptyRange(InvalidRequest):
    title = "since must be before until"
    loc = ("query", "since")
