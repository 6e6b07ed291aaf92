"""UUIDv7 ids and the lower bound of an instant that retention compares them with."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.core.ids import uuid7, uuid7_floor


def test_ids_made_before_an_instant_sort_below_its_floor_and_ids_made_after_above() -> None:
    before = [uuid7() for _ in range(100)]
    time.sleep(0.003)  # past any millisecond the ids above were stamped with
    at = datetime.now(UTC)
    time.sleep(0.003)
    after = [uuid7() for _ in range(100)]
    floor = uuid7_floor(at)
    assert max(before) < floor < min(after)


def test_floor_is_the_smallest_uuid7_of_its_millisecond() -> None:
    at = datetime(2026, 11, 29, 12, 0, 0, 123_999, tzinfo=UTC)
    floor = uuid7_floor(at)
    ms = int(datetime(2026, 11, 29, 12, tzinfo=UTC).timestamp()) * 1000 + 123
    assert floor.int >> 80 == ms
    assert floor.version == 7
    assert floor.variant == uuid.RFC_4122
    assert floor == uuid7_floor(at.replace(microsecond=123_000))  # same millisecond
    assert uuid7_floor(at - timedelta(milliseconds=1)) < floor
    # Nothing of that millisecond is smaller: counter and random bits are all zero.
    assert floor.int & ((1 << 80) - 1) == (0x7 << 76) | (0b10 << 62)


def test_floor_of_another_timezone_is_that_instant() -> None:
    at = datetime(2026, 11, 29, 12, tzinfo=UTC)
    plus_two = at.astimezone(timezone(timedelta(hours=2)))
    assert plus_two.hour == 14
    assert uuid7_floor(plus_two) == uuid7_floor(at)


def test_floor_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        uuid7_floor(datetime(2026, 11, 29, 12))  # noqa: DTZ001 - the point of the test
