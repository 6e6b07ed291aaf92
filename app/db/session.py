"""Transactions: one per request (or worker batch), owned by asyncpg, shared by the ORM session.

The engine runs in SQLAlchemy's AUTOCOMMIT mode, so SQLAlchemy never begins or commits on its
own; ``Database.transaction()`` opens a real transaction on the pooled asyncpg connection and
binds an ``AsyncSession`` to that same connection. ORM queries and the hot paths' raw
statements (``driver(session)``) therefore run in one transaction, committed on success and
rolled back on any exception.

Because the transaction lives below SQLAlchemy, SQLAlchemy cannot see a connection die in it.
So this seam does what the framework would: a connection that failed (or whose rollback
failed) is invalidated in SQLAlchemy's pool and never handed out again, and the pool discards
connections that asyncpg already knows are closed (``app/db/engine.py``). Transient failures
leave as ``DatabaseFault`` subclasses (503, see ``app/db/faults.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import structlog
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from starlette.requests import Request

from app.db import faults
from app.db.exceptions import CommitOutcomeUnknown, DatabaseFault, DatabaseUnavailable

_DRIVER = "creditd.driver"
_ON_END = "creditd.on_end"

log = structlog.get_logger("creditd.db")


def _fault(exc: BaseException, *, closed: bool, connecting: bool = False) -> DatabaseFault | None:
    kind = faults.classify(exc, closed=closed, connecting=connecting)
    if kind is None:
        return None
    if isinstance(exc, kind):
        return exc
    log.warning("database_fault", code=kind.slug, error=type(exc).__name__, detail=str(exc)[:200])
    return kind()


class Database:
    """The engine, owned by the app's lifespan or a worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        ``isolation``/``readonly`` as asyncpg takes them (e.g. "repeatable_read", True for one
        read-only snapshot); the default is the server's (READ COMMITTED).

        Raises a ``DatabaseFault`` for transient failures; ``CommitOutcomeUnknown`` only when
        the connection broke while COMMIT was in flight.
        """
        try:
            conn = await self.engine.connect()
        except Exception as exc:
            fault = _fault(exc, closed=False, connecting=True)
            if fault is None:
                raise
            raise fault from exc
        session: AsyncSession | None = None
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            tx = raw.transaction(isolation=isolation, readonly=readonly)
            try:
                await tx.start()
            except BaseException as exc:
                await conn.invalidate()  # asyncpg keeps a half-begun transaction on it
                fault = _fault(exc, closed=True) if isinstance(exc, Exception) else None
                if fault is None:
                    raise
                raise fault from exc
            session = AsyncSession(bind=conn, expire_on_commit=False, autoflush=False)
            session.info[_DRIVER] = raw
            try:
                yield session
            except BaseException as exc:
                await _close_quietly(session)
                await _roll_back(conn, raw, tx)
                fault = _fault(exc, closed=raw.is_closed()) if isinstance(exc, Exception) else None
                if fault is None or fault is exc:
                    raise
                raise fault from exc
            await session.close()
            await _commit(conn, raw, tx)
        finally:
            if session is not None:
                for callback in session.info.get(_ON_END, ()):
                    callback()
            await conn.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _close_quietly(session: AsyncSession) -> None:
    try:
        await session.close()
    except Exception as exc:  # already failing: the rollback below decides the connection's fate
        log.warning("session_close_failed", error=type(exc).__name__)


async def _roll_back(conn: AsyncConnection, raw: Any, tx: Any) -> None:
    """Roll back; a connection that is closed or cannot roll back is invalidated."""
    if not raw.is_closed():
        try:
            await tx.rollback()
            return
        except Exception as exc:  # the connection is unusable: log and drop it
            log.warning("rollback_failed", error=type(exc).__name__, detail=str(exc)[:200])
    await conn.invalidate()


async def _commit(conn: AsyncConnection, raw: Any, tx: Any) -> None:
    if raw.is_closed():
        # Lost after the last statement and before COMMIT: the server rolled it back.
        await conn.invalidate()
        raise DatabaseUnavailable("The connection to the database was lost; nothing was changed.")
    try:
        await tx.commit()
    except Exception as exc:
        closed = raw.is_closed()
        await conn.invalidate()  # rare; a fresh connection is cheaper than doubt
        fault = _fault(exc, closed=closed)
        if fault is None:
            raise
        if closed or isinstance(fault, DatabaseUnavailable):
            raise CommitOutcomeUnknown(
                "The connection broke while committing: the change may or may not be applied. "
                "Retry with the same Idempotency-Key to get the first result or apply it once."
            ) from exc
        raise fault from exc  # the server refused the COMMIT: it rolled back


def on_end(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the session's transaction has ended (committed or not)."""
    session.info.setdefault(_ON_END, []).append(callback)


def driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session's transaction, for lean hot-path statements."""
    return session.info[_DRIVER]


async def get_session(request: Request) -> AsyncSession:
    """The request's session; the transactional route class opened it and commits it."""
    session: AsyncSession = request.state.session
    return session


Session = Annotated[AsyncSession, Depends(get_session)]
