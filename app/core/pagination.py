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


async def page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page (1-100)")] = 20,
    starting_after: Annotated[
        str | None, Query(max_length=255, description="Cursor: the id of the last item seen")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, starting_after=starting_after)


def make_page(items: list[T], limit: int, cursor_of: object) -> Page[T]:
    """Build a page from ``limit + 1`` fetched items; ``cursor_of`` maps an item to its cursor."""
    has_more = len(items) > limit
    items = items[:limit]
    next_cursor = str(cursor_of(items[-1])) if has_more and items else None  # type: ignore[operator]
    return Page(data=items, has_more=has_more, next_cursor=next_cursor)
