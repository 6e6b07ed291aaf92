"""Transient database failures, each answered 503 with ``Retry-After`` and a slug of its own.

Every one of them means the request's transaction did not commit, so nothing changed, except
``commit_outcome_unknown``: the connection broke while COMMIT was in flight.
"""

from __future__ import annotations

from app.core.errors import ServiceUnavailable


class DatabaseFault(ServiceUnavailable):
    """Base of the transient database failures (see ``app/db/faults.py``)."""


class DatabaseUnavailable(DatabaseFault):
    slug = "database_unavailable"
    title = "The database is unreachable, restarting or refusing connections"
    retry_after = 2


class LockTimeout(DatabaseFault):
    slug = "lock_timeout"
    title = "A row this request needs stayed locked past lock_timeout"


class StatementTimeout(DatabaseFault):
    slug = "statement_timeout"
    title = "A database statement ran past statement_timeout or was cancelled"


class SerializationFailure(DatabaseFault):
    slug = "serialization_failure"
    title = "The database could not serialize this transaction with a concurrent one"


class DeadlockDetected(DatabaseFault):
    slug = "deadlock_detected"
    title = "The database broke a deadlock by aborting this transaction"


class PoolTimeout(DatabaseFault):
    slug = "pool_timeout"
    title = "No database connection became free in time"


class CommitOutcomeUnknown(DatabaseFault):
    """The one fault that may have changed something: the reply to COMMIT was lost.

    Requests with an ``Idempotency-Key`` are resolved before answering (the stored response
    says whether the commit happened), so they only get this when the database stays away;
    a retry with the same key then replays the first result or applies it once.
    """

    slug = "commit_outcome_unknown"
    # The server process that was committing, when known: until it is gone, its COMMIT (and
    # what rode along with it) may still be running, and a read cannot tell the outcome.
    server_pid: int | None = None
    title = "The connection broke while committing; the change may or may not be applied"
    retry_after = 2
