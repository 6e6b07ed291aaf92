"""Cursor pagination shared by every list endpoint."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int = 20
    starting_after: str | None = None


Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (1-100)")]
_CURSOR = "Cursor: the id of the last item seen"


async def page_params(
    limit: Limit = 20,
    starting_after: Annotated[str | None, Query(max_length=255, description=_CURSOR)] = None,
) -> PageParams:
    return PageParams(limit=limit, starting_after=starting_after)


# Lists whose items have UUIDs or sequence numbers take only such a cursor (else 422, see
# app.core.cursors); the spec says so, so that clients and fuzzers send well-formed ones.
async def uuid_page_params(
    limit: Limit = 20,
    starting_after: Annotated[
        str | None,
        Query(max_length=255, description=_CURSOR, json_schema_extra={"format": "uuid"}),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, starting_after=starting_after)


async def int_page_params(
    limit: Limit = 20,
    starting_after: Annotated[
        str | None,
        Query(max_length=255, description=_CURSOR, json_schema_extra={"pattern": "^[0-9]{1,18}$"}),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, starting_after=starting_after)


def make_page(items: list[T], limit: int, cursor_of: object) -> Page[T]:
    """Build a page from ``limit + 1`` fetched items; ``cursor_of`` maps an item to its cursor."""
    has_more = len(items) > limit
    items = items[:limit]
    next_cursor = str(cursor_of(items[-1])) if has_more and items else None  # type: ignore[operator]
    return Page(data=items, has_more=has_more, next_cursor=next_cursor)
