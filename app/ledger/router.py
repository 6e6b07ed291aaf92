"""GET /v1/ledger/export: the project's ledger as hash-chained JSON lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import StreamingResponse

from app.auth.dependencies import ReadKey
from app.core.errors import problem_responses
from app.core.money import UtcDatetime
from app.db.session import Database, Session
from app.ledger import chain, service
from app.ledger.exceptions import EmptyRange, LedgerEntryNotFound
from app.ledger.schemas import LedgerExportLine
from app.routing import TransactionalRoute

router = APIRouter(prefix="/v1/ledger", tags=["ledger"], route_class=TransactionalRoute)


class NDJSONResponse(StreamingResponse):
    media_type = chain.MEDIA_TYPE


_DESCRIPTION = """Every ledger entry of the project with `since <= created_at < until`, one JSON
object per line in (created_at, id) order, each chained to the previous one by SHA-256
(`hash` = SHA-256 of `prev_hash` followed by the line's bytes without its `prev_hash` and `hash`
members, i.e. `line[:-154] + "}"`); the first line chains from 64 zeros unless `prev_hash` is
given. The last line is a `ledger_export_end` trailer: a stream that ends without one was cut
short (database failure), and resumes with `after` = the last entry's `id` and `prev_hash` = the
last line's `hash`. The export ends at a horizon no later than `until` and before any write
still in progress, so everything dated before it is final: resuming never skips an entry.
Later versions may add members to a line (always before `prev_hash`)."""


@router.get(
    "/export",
    operation_id="ledger_export",
    summary="Export the ledger as hash-chained JSON lines",
    description=_DESCRIPTION,
    response_model=None,
    response_class=NDJSONResponse,
    responses={
        200: {"model": LedgerExportLine, "description": "JSON lines (application/x-ndjson)"},
        **problem_responses(LedgerEntryNotFound, EmptyRange),
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
    plan = await service.plan(
        session,
        principal.project_id,
        since=since,
        until=until,
        after=after,
        prev_hash=prev_hash or chain.GENESIS,
    )
    db: Database = request.app.state.db
    body: AsyncIterator[bytes] = service.stream(db, plan)
    return NDJSONResponse(body, headers={"Cache-Control": "no-store"})
