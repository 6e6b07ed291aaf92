"""GET /v1/ledger/export: the project's ledger as hash-chained JSON lines."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Query
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.auth.dependencies import ReadKey
from app.core.errors import RateLimited, problem_responses
from app.core.money import UtcDatetime
from app.db.session import Database, Session
from app.ledger import chain, service
from app.ledger.exceptions import EmptyRange, ExportInProgress, ExportsBusy, LedgerEntryNotFound
from app.ledger.schemas import LedgerExportLine
from app.ledger.slots import ExportSlots
from app.routing import TransactionalRoute

log = structlog.get_logger("creditd.ledger")

router = APIRouter(prefix="/v1/ledger", tags=["ledger"], route_class=TransactionalRoute)


class NDJSONResponse(StreamingResponse):
    media_type = chain.MEDIA_TYPE


class ExportResponse(NDJSONResponse):
    """Gives the export's slot back once the response has ended, however it ended; or, should
    it never be sent (the request's transaction failed after the handler), once it is dropped.

    A client that takes nothing for ``service.CLIENT_STALL_SECONDS`` (a send that cannot
    complete: its socket's buffers are full) is cut off, so it cannot keep its slot forever; it
    resumes like after any cut (README "Ledger export")."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(body, headers={"Cache-Control": "no-store"})
        self._release = release
        weakref.finalize(self, release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as stall:

                async def paced(message: Message) -> None:
                    # Only the time a send waits for the client counts, not the batches.
                    stall.reschedule(loop.time() + service.CLIENT_STALL_SECONDS)
                    await send(message)
                    stall.reschedule(None)

                await super().__call__(scope, receive, paced)
        except TimeoutError:
            log.info("ledger_export_client_stalled", seconds=service.CLIENT_STALL_SECONDS)
            raise ClientDisconnect() from None  # nobody reads: logged as 499, connection closed
        finally:
            self._release()


_DESCRIPTION = """Every ledger entry of the project with `since <= created_at < until`, one JSON
object per line in (created_at, id) order, each chained to the previous one by SHA-256
(`hash` = SHA-256 of `prev_hash` followed by the line's bytes without its `prev_hash` and `hash`
members, i.e. `line[:-154] + "}"`); the first line chains from 64 zeros unless `prev_hash` is
given. The last line is a `ledger_export_end` trailer: a stream that ends without one was cut
short (database failure), and resumes with `after` = the last entry's `id` and `prev_hash` = the
last line's `hash`. The export ends at a horizon no later than `until` and before any write
still in progress, so everything dated before it is final: resuming never skips an entry.
Later versions may add members to a line (always before `prev_hash`).

Each process streams a few exports at once (`CREDITD_LEDGER__MAX_CONCURRENT_EXPORTS`, and
`..._PER_PROJECT` per project): more are refused at once with 429
`ledger_export_in_progress` (this project's share is taken) or 503 `ledger_exports_busy`,
both with `Retry-After`."""


@router.get(
    "/export",
    operation_id="ledger_export",
    summary="Export the ledger as hash-chained JSON lines",
    description=_DESCRIPTION,
    response_model=None,
    response_class=NDJSONResponse,
    responses={
        200: {"model": LedgerExportLine, "description": "JSON lines (application/x-ndjson)"},
        # A 429 or 503 of the route's own replaces the app's entry of that status: the app's
        # rate_limited is listed again (TransactionalRoute merges the transient 503s in).
        **problem_responses(
            LedgerEntryNotFound, EmptyRange, ExportInProgress, RateLimited, ExportsBusy
        ),
    },
)
async def export(
    request: Request,
    session: Session,
    principal: ReadKey,
    since: Annotated[UtcDatetime | None, Query(description="Entries created at or after")] = None,
    until: Annotated[UtcDatetime | None, Query(description="Entries created before")] = None,
    format: Annotated[Literal["jsonl"], Query(description="The only format: JSON lines")] = "jsonl",
    after: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Resume after this entry id")
    ] = None,
    prev_hash: Annotated[
        str | None,
        Query(pattern="^[0-9a-f]{64}$", description="Chain on from this hash (resuming)"),
    ] = None,
) -> NDJSONResponse:
    if since is not None and until is not None and since >= until:
        raise EmptyRange()
    slots: ExportSlots = request.app.state.ledger_exports
    release = slots.acquire(principal.project_id)
    try:
        plan = await service.plan(
            session,
            principal.project_id,
            since=since,
            until=until,
            after=after,
            prev_hash=prev_hash or chain.GENESIS,
        )
    except BaseException:
        release()
        raise
    db: Database = request.app.state.db
    body: AsyncIterator[bytes] = service.stream(db, plan)
    return ExportResponse(body, release)
