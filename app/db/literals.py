"""SQL literals for the few statements sent in the simple-query protocol.

Parameters cannot travel in a simple query, and only a simple query carries several statements
in one round trip: ``BEGIN`` with the lock and look-up of an ``Idempotency-Key``, the stored
response with ``COMMIT`` (``app/db/session.py``). Those statements are server-side prepared
once per connection and executed here with literal arguments, so the server parses a short
``EXECUTE`` and plans nothing.

Text is written as an escape string, E'...', with every backslash and quote doubled: read the
same whether ``standard_conforming_strings`` is on or off (it is pinned on per connection in
``app/db/engine.py`` anyway). A NUL byte cannot be represented and is refused.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal


def text(value: str) -> str:
    """A text literal: an escape string (E'...') with every backslash and quote doubled, read
    the same whatever ``standard_conforming_strings`` says."""
    if "\x00" in value:
        raise ValueError("a text literal cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def bytea(value: bytes) -> str:
    """A bytea literal in hex form."""
    return "E'\\\\x" + value.hex() + "'"


def integer(value: int) -> str:
    """An integer literal (``bool`` is not an integer here)."""
    if type(value) is not int:
        raise TypeError(f"not an int: {value!r}")
    return str(value)


def uuid_(value: uuid.UUID) -> str:
    """A uuid literal."""
    return f"'{uuid.UUID(str(value))}'"


def interval(value: timedelta) -> str:
    """An interval literal: days, seconds and microseconds (each fits the 32-bit fields
    older servers parse into)."""
    return f"'{value.days} days {value.seconds} seconds {value.microseconds} microseconds'"


def value(item: object) -> str:
    """A parameter as an untyped literal (or NULL): PostgreSQL reads it with the input function
    of the parameter's type, as it would a parameter sent as text. Raises ``TypeError`` for a
    value with no such rendering here (the caller then sends it as a real parameter)."""
    if item is None:
        return "NULL"
    if isinstance(item, bool):
        return "'true'" if item else "'false'"
    if isinstance(item, str):
        return text(item)
    if isinstance(item, int | Decimal | uuid.UUID):
        return text(str(item))
    if isinstance(item, datetime | date):
        return text(item.isoformat())
    if isinstance(item, bytes):
        return bytea(item)
    raise TypeError(f"no literal for {type(item).__name__}")
