from __future__ import annotations

from app.core.errors import AppError, InvalidRequest, NotFound, ServiceUnavailable

# An export of a large ledger takes seconds to minutes: a client told to retry sooner only
# comes back to be refused again.
EXPORT_RETRY_AFTER = 5


class LedgerEntryNotFound(NotFound):
    slug = "ledger_entry_not_found"
    title = "No such ledger entry"


class EmptyRange(InvalidRequest):
    title = "since must be before until"
    loc = ("query", "since")


class ExportInProgress(AppError):
    """The project already runs as many exports (in this process) as it may."""

    slug = "ledger_export_in_progress"
    title = "This project's ledger exports are already running; retry when one has finished"
    status = 429

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(EXPORT_RETRY_AFTER)})


class ExportsBusy(ServiceUnavailable):
    """The process runs as many exports as it may, for all projects together."""

    slug = "ledger_exports_busy"
    title = "Too many ledger exports are running; retry later"
    retry_after = EXPORT_RETRY_AFTER
