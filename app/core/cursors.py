"""Parsing of list cursors: a malformed cursor is a client error, never a 500."""

from __future__ import annotations

import uuid

from app.core.errors import AppError, InvalidRequest


class InvalidCursor(InvalidRequest):
    title = "starting_after is not a valid cursor"
    loc = ("query", "starting_after")


def uuid_cursor(value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidCursor() from None


def int_cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidCursor()
    return int(value)


def parse_id(value: str, not_found: type[AppError]) -> uuid.UUID:
    """A path id: malformed ids are as unknown as missing ones (404, like any foreign id)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found() from None
