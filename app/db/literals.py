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
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any


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


def _quoted(item: object) -> str:
    """A literal of a value whose text holds no quote, backslash or NUL (digits, signs, hex,
    ISO dates): quoted as it is."""
    return "'" + str(item) + "'"


def _iso(item: date) -> str:
    return "'" + item.isoformat() + "'"


_RENDER: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "NULL",
    bool: lambda item: "'true'" if item else "'false'",
    str: text,
    int: _quoted,
    Decimal: _quoted,
    uuid.UUID: _quoted,
    datetime: _iso,
    date: _iso,
    bytes: bytea,
}


def value(item: object) -> str:
    """A parameter as an untyped literal (or NULL): PostgreSQL reads it with the input function
    of the parameter's type, as it would a parameter sent as text. Raises ``TypeError`` for a
    value with no such rendering here (the caller then sends it as a real parameter).

    Looked up by exact type (a request's last write has dozens of arguments); a subclass of
    one of those types goes through ``isinstance``."""
    render = _RENDER.get(type(item))
    if render is not None:
        return render(item)
    if isinstance(item, bool):
        return _RENDER[bool](item)
    for kind in (str, int, Decimal, uuid.UUID, datetime, date, bytes):
        if isinstance(item, kind):
            return _RENDER[kind](item)
    raise TypeError(f"no literal for {type(item).__name__}")
