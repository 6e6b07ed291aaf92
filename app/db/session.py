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

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import Depends
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util import await_only, greenlet_spawn
from starlette.requests import Request

from app.db import faults
from app.db.exceptions import CommitOutcomeUnknown, DatabaseFault, DatabaseUnavailable

T = TypeVar("T")
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


_ISOLATION = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
_PREPARED_NAMES = "creditd.prepared"
_AUTOCOMMIT = "creditd.autocommit"
_COMMIT_WITH = "creditd.commit_with"
_OPENED = "creditd.opened"
_CONN_INFO = "creditd.connection_info"

# Statements that ride along with BEGIN or COMMIT (``Opening``, ``commit_with``) run in the
# simple-query protocol, which takes no parameters: they are prepared once on each pooled
# connection (name -> "PREPARE name(types) AS ...") and executed with literal arguments
# (``app/db/literals.py``).
_PREPARED: dict[str, str] = {}


def prepared(name: str, types: str, sql: str) -> str:
    """Register ``sql`` to be prepared as ``name`` on every connection; returns ``name``."""
    _PREPARED[name] = f"PREPARE {name}({types}) AS {sql}"
    return name


def _begin_sql(isolation: str | None, readonly: bool) -> str:
    sql = "BEGIN"
    if isolation is not None:
        sql += f" ISOLATION LEVEL {_ISOLATION[isolation]}"
    if readonly:
        sql += " READ ONLY"
    return sql


@dataclass(frozen=True)
class Opening:
    """Statements sent in the same round trip as BEGIN (a simple query, literal arguments):
    the lock on an ``Idempotency-Key`` and the look-up of its row. ``translate`` turns their
    own errors into the request's answer (None: handled as any database error)."""

    sql: str
    translate: Callable[[Exception], Exception | None] = lambda exc: None


async def send(raw: Any, sql: str) -> str:
    """One simple query (BEGIN, COMMIT, ROLLBACK and what rides along); its last status tag.
    The one place those statements leave, so fault tests can lose a COMMIT's reply here."""
    status: str = await raw.execute(sql)
    return status


class Database:
    """The engine, owned by the app's lifespan or a worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        opening: Opening | None = None,
        autocommit: bool = False,
    ) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        ``isolation`` ("repeatable_read", "serializable") and ``readonly``; the default is
        the server's READ COMMITTED. ``opening`` is executed with BEGIN in one round trip; the
        status tag of its last statement is ``opened(session)``. ``commit_with(session, sql)``
        sends ``sql`` with COMMIT in one round trip. With ``autocommit`` there is no transaction
        at all: every statement commits on its own (for reads that need no common snapshot).

        Raises a ``DatabaseFault`` for transient failures; ``CommitOutcomeUnknown`` only when
        the connection broke while COMMIT was in flight.
        """
        try:
            # One greenlet for the pool checkout and the driver connection (SQLAlchemy's
            # async API would spawn one for each): every greenlet costs a fresh frame stack.
            sync_conn, raw = await greenlet_spawn(_checkout, self.engine.sync_engine)
        except Exception as exc:
            fault = _fault(exc, closed=False, connecting=True)
            if fault is None:
                raise
            raise fault from exc
        conn = AsyncConnection(self.engine, sync_conn)
        session: AsyncSession | None = None
        settled = False  # committed, rolled back or dropped: fit to go back to the pool
        try:
            session = AsyncSession(bind=conn, expire_on_commit=False, autoflush=False)
            session.info[_DRIVER] = raw
            session.info[_CONN_INFO] = conn.info
            if autocommit:
                if opening is not None:
                    raise ValueError("an opening statement needs a transaction")
                session.info[_AUTOCOMMIT] = True
            else:
                begin = _begin_sql(isolation, readonly)
                try:
                    await _begin(conn, raw, session, begin, opening)
                except Exception as exc:
                    answer = opening.translate(exc) if opening is not None else None
                    if answer is not None:  # the opening's own refusal: a sound connection
                        await _roll_back(conn, raw)
                        settled = True
                        raise answer from None
                    # Anything else leaves the connection in doubt (a half-prepared batch, a
                    # stale statement): never pooled again.
                    closed = raw.is_closed()
                    await conn.invalidate()
                    settled = True
                    fault = _fault(exc, closed=closed)
                    if fault is None or fault is exc:
                        raise
                    raise fault from exc
            try:
                yield session
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Cancelled (a client gone, a timeout): nothing more may be awaited, and a
                    # statement may be half-way. Closing the socket rolls back on the server.
                    raw.terminate()
                    settled = True
                    raise
                await _close_quietly(session)
                await _roll_back(conn, raw)
                settled = True
                fault = _fault(exc, closed=raw.is_closed())
                if fault is None or fault is exc:
                    raise
                raise fault from exc
            if session.sync_session.in_transaction():  # the ORM was used: release its state
                await session.close()
            if not autocommit:
                await _commit(conn, raw, session.info.get(_COMMIT_WITH))
            settled = True
        finally:
            if session is not None:
                for callback in session.info.get(_ON_END, ()):
                    callback()
            if not settled and not raw.is_closed():
                raw.terminate()  # left mid-way (cancelled while settling): never pool it so
            await conn.close()

    async def autocommit(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(raw)`` on a pooled connection's asyncpg connection, with no session
        and no transaction: each statement commits on its own (the metering fast path,
        app/transactions/fast.py). One greenlet carries the pool checkout, the work and the
        check-in (``transaction()`` needs one for each end). Transient failures leave as
        ``DatabaseFault``; a connection that failed is never pooled again."""
        result: T = await greenlet_spawn(_autocommit, self.engine.sync_engine, work)
        return result

    async def dispose(self) -> None:
        await self.engine.dispose()


def _autocommit(engine: Engine, work: Callable[[Any], Awaitable[T]]) -> T:
    """``Database.autocommit`` inside its greenlet."""
    try:
        sync_conn, raw = _checkout(engine)
    except Exception as exc:
        fault = _fault(exc, closed=False, connecting=True)
        if fault is None:
            raise
        raise fault from exc
    try:
        result: T = await_only(work(raw))
        return result
    except Exception as exc:
        closed = raw.is_closed()
        if closed:
            sync_conn.invalidate()
        fault = _fault(exc, closed=closed)
        if fault is None or fault is exc:
            raise
        raise fault from exc
    except BaseException:
        # Cancelled (a client gone, a timeout): a statement may be half-way. Closing the
        # socket ends it on the server if it is still waiting for a lock (PostgreSQL checks
        # the client every client_check_interval_ms); one past its locks completes and, outside
        # a transaction, commits. The pool discards the connection at its next checkout.
        raw.terminate()
        raise
    finally:
        sync_conn.close()


def _checkout(engine: Engine) -> tuple[Connection, Any]:
    """A pooled connection and its asyncpg connection (runs in a greenlet)."""
    sync_conn = engine.connect()
    try:
        raw = sync_conn.connection.driver_connection
    except BaseException:
        sync_conn.close()
        raise
    assert raw is not None
    return sync_conn, raw


async def _begin(
    conn: AsyncConnection, raw: Any, session: AsyncSession, begin: str, opening: Opening | None
) -> None:
    """BEGIN (with the opening statement); on a connection new to us, prepare first."""
    done: set[str] = conn.info.setdefault(_PREPARED_NAMES, set())
    missing = [name for name in _PREPARED if name not in done]
    if missing:
        await send(raw, "; ".join(_PREPARED[name] for name in missing))
        done.update(missing)
    if opening is None:
        await send(raw, begin)
        return
    session.info[_OPENED] = await send(raw, f"{begin}; {opening.sql}")


def opened(session: AsyncSession) -> str:
    """The status tag of the transaction's ``Opening`` (of its last statement)."""
    status: str = session.info[_OPENED]
    return status


def commit_with(session: AsyncSession, sql: str) -> None:
    """Send ``sql`` (a simple-query statement) in COMMIT's round trip, after the statements
    given before it: applied exactly when the transaction commits. An error in any of them
    rolls the whole transaction back (``Database.transaction`` raises it, as a fault where
    it is one)."""
    if session.info.get(_AUTOCOMMIT):
        raise RuntimeError("no COMMIT to send this with: the session is in autocommit")
    session.info.setdefault(_COMMIT_WITH, []).append(sql)


def connection_info(session: AsyncSession) -> dict[str, Any]:
    """State kept with the session's pooled connection for its lifetime (cleared when the
    connection is replaced): what was prepared on it."""
    info: dict[str, Any] = session.info[_CONN_INFO]
    return info


async def _close_quietly(session: AsyncSession) -> None:
    if not session.sync_session.in_transaction():
        return  # the ORM was not used: nothing to release
    try:
        await session.close()
    except Exception as exc:  # already failing: the rollback below decides the connection's fate
        log.warning("session_close_failed", error=type(exc).__name__)


async def _roll_back(conn: AsyncConnection, raw: Any) -> None:
    """Roll back; a connection that is closed or cannot roll back is invalidated."""
    if not raw.is_closed():
        try:
            if raw.is_in_transaction():
                await send(raw, "ROLLBACK")
            return
        except Exception as exc:  # the connection is unusable: log and drop it
            log.warning("rollback_failed", error=type(exc).__name__, detail=str(exc)[:200])
    await conn.invalidate()


async def _commit(conn: AsyncConnection, raw: Any, commit_with: list[str] | None) -> None:
    if raw.is_closed():
        # Lost after the last statement and before COMMIT: the server rolled it back.
        await conn.invalidate()
        raise DatabaseUnavailable("The connection to the database was lost; nothing was changed.")
    server_pid = raw.get_server_pid()
    try:
        status = await send(raw, "; ".join([*(commit_with or ()), "COMMIT"]))
    except Exception as exc:
        closed = raw.is_closed()
        await conn.invalidate()  # rare; a fresh connection is cheaper than doubt
        fault = _fault(exc, closed=closed)
        if fault is None:
            raise
        if closed or isinstance(fault, DatabaseUnavailable):
            unknown = CommitOutcomeUnknown(
                "The connection broke while committing: the change may or may not be applied. "
                "Retry with the same Idempotency-Key to get the first result or apply it once."
            )
            unknown.server_pid = server_pid
            raise unknown from exc
        raise fault from exc  # the server refused the COMMIT (or what rode along): rolled back
    if status != "COMMIT":  # "ROLLBACK": the transaction had failed and someone swallowed it
        raise RuntimeError(f"COMMIT answered {status!r}: the transaction had failed")


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
