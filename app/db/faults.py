"""Which exceptions are transient database failures, and which 503 each one becomes.

Errors reach us raw from asyncpg (the hot paths), wrapped by SQLAlchemy (ORM statements; the
asyncpg error is the ``orig``/``__cause__``), or from the pool and the connect call. SQLSTATEs
decide where the server sent one; otherwise a closed connection means the database went away.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from sqlalchemy import exc as sa_exc

from app.core.errors import AppError
from app.db.exceptions import (
    DatabaseFault,
    DatabaseUnavailable,
    DeadlockDetected,
    LockTimeout,
    PoolTimeout,
    SerializationFailure,
    StatementTimeout,
)

_BY_SQLSTATE: dict[str, type[DatabaseFault]] = {
    "55P03": LockTimeout,  # lock_not_available
    "57014": StatementTimeout,  # query_canceled (statement_timeout, pg_cancel_backend)
    "40001": SerializationFailure,
    "40P01": DeadlockDetected,
    "57P01": DatabaseUnavailable,  # admin_shutdown (also pg_terminate_backend)
    "57P02": DatabaseUnavailable,  # crash_shutdown
    "57P03": DatabaseUnavailable,  # cannot_connect_now: starting up, shutting down
    "53300": DatabaseUnavailable,  # too_many_connections
    "25P03": DatabaseUnavailable,  # idle_in_transaction_session_timeout
}
_CLOSED_MESSAGES = ("connection is closed", "connection was closed", "underlying connection")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it: SQLAlchemy's ``orig``, ``__cause__``, ``__context__``."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        for nxt in (orig, current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _sqlstate(exc: BaseException) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and len(value) == 5:
            return value
    return None


def classify(
    exc: BaseException, *, closed: bool = False, connecting: bool = False
) -> type[DatabaseFault] | None:
    """The 503 that ``exc`` stands for, or None when it is not a transient database failure.

    ``closed``: the connection the exception came from is closed now. ``connecting``: it was
    raised while taking a connection from the pool (or opening one).
    """
    if isinstance(exc, AppError):
        return exc.__class__ if isinstance(exc, DatabaseFault) else None
    for err in _chain(exc):
        if isinstance(err, DatabaseFault):
            return err.__class__
        if isinstance(err, sa_exc.TimeoutError):  # QueuePool: no connection within pool_timeout
            return PoolTimeout
        state = _sqlstate(err)
        if state is not None:
            if state in _BY_SQLSTATE:
                return _BY_SQLSTATE[state]
            if state.startswith("08"):  # connection_exception and its subclasses
                return DatabaseUnavailable
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return DatabaseUnavailable
        if isinstance(err, asyncpg.InternalClientError):  # protocol left mid-operation
            return DatabaseUnavailable
        if isinstance(err, asyncpg.InterfaceError) and any(m in str(err) for m in _CLOSED_MESSAGES):
            return DatabaseUnavailable
        if connecting and isinstance(err, OSError | asyncpg.PostgresError):
            return DatabaseUnavailable  # refused, no socket, DNS, connect timeout, auth at boot
    return DatabaseUnavailable if closed else None
