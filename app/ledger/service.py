"""The ledger export: a complete, ordered, hash-chained stream of a project's ledger entries.

Completeness: the export covers exactly the entries with ``since <= created_at < horizon``,
where the horizon (``repository.HORIZON``) is read *before* any of the export's reads, and no
transaction that could still commit an entry dated before it was running then. So every such
entry is committed before the first batch is read, nothing dated before the horizon can appear
later, and a resume after any line's (created_at, id) misses nothing. Ordering by id alone
would not do: ids are drawn inside transactions, so a lower id can commit after a higher one
was exported.

That range never changes once the horizon is known, so no snapshot is needed to read it
consistently: the export reads it in keyset batches, each in a short transaction of its own,
and gives the connection back before the batch goes to the client. A slow client holds no
connection and no transaction, only its slot (``slots.ExportSlots``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import Database, driver
from app.ledger import chain, repository
from app.ledger.exceptions import LedgerEntryNotFound

log = structlog.get_logger("creditd.ledger")

HORIZON_MARGIN_SECONDS = 1.0
BATCH_ROWS = 1000
QUEUE_CHUNKS = 4
# A client whose socket takes nothing for this long is cut off (it resumes), freeing its slot.
CLIENT_STALL_SECONDS = 60.0
_LOWEST = datetime(1, 1, 1, tzinfo=UTC)
_TASKS: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Plan:
    """One export request, resolved: its range, where it resumes, and its chain's start."""

    project_id: uuid.UUID
    since: datetime | None
    until: datetime | None
    horizon: datetime
    after: int | None
    after_at: datetime | None
    prev_hash: str


class ExportInterrupted(Exception):
    """The database failed mid-stream: the export ends without its trailer."""


async def plan(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    prev_hash: str = chain.GENESIS,
) -> Plan:
    """Resolve the cursor and read the horizon. The export's batches must then run in *later*
    transactions (their snapshots taken after the horizon was read)."""
    raw = driver(session)
    after_at: datetime | None = None
    if after is not None:
        after_at = await raw.fetchval(repository.ENTRY_KEY, project_id, after)
        if after_at is None:
            raise LedgerEntryNotFound()
    horizon: datetime = await raw.fetchval(repository.HORIZON, HORIZON_MARGIN_SECONDS)
    if until is not None and until < horizon:
        horizon = until
    return Plan(project_id, since, until, horizon, after, after_at, prev_hash)


async def stream(db: Database, p: Plan) -> AsyncIterator[bytes]:
    """The export's lines in chunks, read by a task of its own (``batches``: one short
    transaction per batch) through a bounded queue: constant memory whatever the client's pace,
    and no connection held while the client is slow.

    However the consumer stops (client gone, cancelled), the reader is cancelled once: a batch
    in flight is rolled back, or its connection dropped if the query was still running.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    task = asyncio.create_task(_produce(db, p, queue))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise ExportInterrupted(str(item) or type(item).__name__) from item
            yield item
    finally:
        task.cancel()


async def batches(
    db: Database,
    project_id: uuid.UUID,
    *,
    since: datetime | None,
    until: datetime,
    after_at: datetime | None = None,
    after: int | None = None,
) -> AsyncIterator[list[Any]]:
    """The project's entries with ``since <= created_at < until`` after (after_at, after), in
    (created_at, id) order, ``BATCH_ROWS`` at a time. Each batch is read in a short READ ONLY
    transaction whose connection is back in the pool before the batch is yielded. Sound only
    for a range that no longer changes: ``until`` at most a horizon (``plan``)."""
    key_at, key_id = after_at or _LOWEST, after or 0
    while True:
        async with db.transaction(readonly=True) as session:
            rows = await driver(session).fetch(
                repository.EXPORT_BATCH,
                project_id,
                since or _LOWEST,
                until,
                key_at,
                key_id,
                BATCH_ROWS,
            )
        if not rows:
            return
        yield rows
        if len(rows) < BATCH_ROWS:
            return
        key_at, key_id = rows[-1]["created_at"], rows[-1]["id"]


async def _produce(
    db: Database, p: Plan, queue: asyncio.Queue[bytes | BaseException | None]
) -> None:
    try:
        prev, count, last = p.prev_hash, 0, p.after
        async for rows in batches(
            db, p.project_id, since=p.since, until=p.horizon, after_at=p.after_at, after=p.after
        ):
            chunk, prev = seal_entries(rows, prev)
            count += len(rows)
            last = rows[-1]["id"]
            await queue.put(chunk)
        end = chain.end_content(
            project_id=str(p.project_id),
            since=p.since,
            until=p.until,
            horizon=p.horizon,
            after=p.after,
            entries=count,
            next_after=last,
        )
        line, _ = chain.seal(end, prev)
        await queue.put(line.encode())
        await queue.put(None)
    except Exception as exc:
        log.warning("ledger_export_failed", error=type(exc).__name__, detail=str(exc)[:200])
        await queue.put(exc)


def seal_entries(rows: Iterable[Any], prev: str) -> tuple[bytes, str]:
    parts = []
    for row in rows:
        line, prev = chain.seal(chain.entry_content(row), prev)
        parts.append(line)
    return "".join(parts).encode(), prev


@dataclass
class Mismatch:
    line: int | None
    reason: str


async def verify_against_db(
    db: Database,
    path: str,
    summary: chain.Summary,
    *,
    prev_hash: str = chain.GENESIS,
    project_id: uuid.UUID | None = None,
    since: datetime | None = None,
    limit: int = 20,
) -> list[Mismatch]:
    """Each entry line equals the stored entry, byte for byte as the export renders it, and no
    stored entry of the file's range is missing: the range is the first segment's ``since``
    (after its ``after``) to the last trailer's horizon, or to the last entry if the file was
    cut short. Streams both sides in (created_at, id) order: constant memory."""
    if summary.project_id is not None:
        project_id = uuid.UUID(summary.project_id)
        since = chain.parse_timestamp(summary.since) if summary.since else None
    elif project_id is None:
        return [Mismatch(None, "no trailer names the project: give it (and since)")]
    if summary.entries == 0 and not summary.complete:
        return []
    if summary.complete:
        assert summary.horizon is not None
        until = chain.parse_timestamp(summary.horizon)
        stop: tuple[str, int] | None = None
    else:
        assert summary.last_entry is not None
        until = chain.parse_timestamp(summary.last_entry[0]) + timedelta(microseconds=1)
        stop = summary.last_entry
    problems: list[Mismatch] = []
    after_at: datetime | None = None
    if summary.first_after is not None:
        async with db.transaction(readonly=True) as session:
            after_at = await driver(session).fetchval(
                repository.ENTRY_KEY, project_id, summary.first_after
            )
        if after_at is None:
            return [Mismatch(None, f"entry {summary.first_after} (resumed after) not stored")]
    # The file's range ends at a horizon (or before its last entry, which was below one): it no
    # longer changes, so batches in transactions of their own see all of it.
    stored = _rows(
        batches(
            db, project_id, since=since, until=until, after_at=after_at, after=summary.first_after
        )
    )
    try:
        await _compare(path, prev_hash, stored, stop, problems, limit)
    finally:
        await stored.aclose()
    return problems


async def _compare(
    path: str,
    prev_hash: str,
    stored: AsyncGenerator[Any, None],
    stop: tuple[str, int] | None,
    problems: list[Mismatch],
    limit: int,
) -> None:
    # A local file read line by line between fetches: blocking, as the CLI is.
    with open(path, "rb") as f:  # noqa: ASYNC230
        lines = (x for x in chain.walk(f, prev_hash) if x.data["object"] == chain.ENTRY)
        line = next(lines, None)
        row = await anext(stored, None)
        while (line is not None or row is not None) and len(problems) < limit:
            rkey = None if row is None else (row["ts"], row["id"])
            if rkey is not None and stop is not None and rkey > stop:
                row, rkey = None, None
                if line is None:
                    break
            lkey = None if line is None else (line.data["created_at"], line.data["id"])
            if lkey is not None and (rkey is None or lkey < rkey):
                assert line is not None
                problems.append(Mismatch(line.number, f"entry {lkey[1]} is not stored"))
                line = next(lines, None)
            elif rkey is not None and (lkey is None or rkey < lkey):
                where = "at the end" if line is None else f"before line {line.number}"
                problems.append(Mismatch(None, f"stored entry {rkey[1]} missing {where}"))
                row = await anext(stored, None)
            else:
                assert line is not None
                assert row is not None
                if chain.entry_content(row).encode() != line.content:
                    problems.append(
                        Mismatch(line.number, f"entry {row['id']} differs from the stored one")
                    )
                line = next(lines, None)
                row = await anext(stored, None)


async def _rows(source: AsyncIterator[list[Any]]) -> AsyncGenerator[Any, None]:
    async for rows in source:
        for row in rows:
            yield row
