"""Time-ordered identifiers (UUIDv7), so ids sort by creation and work as list cursors."""

import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_lock = threading.Lock()
_last = 0


def uuid7() -> uuid.UUID:
    """A UUIDv7 whose 48-bit ms timestamp and 12-bit counter are monotonic within the process."""
    global _last  # noqa: PLW0603 - process-wide monotonic counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        candidate = ms << 12
        _last = max(candidate, _last + 1)
        ts_seq = _last
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = ((ts_seq >> 12) << 80) | (0x7 << 76) | ((ts_seq & 0xFFF) << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)


def uuid7_floor(when: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of ``when``'s millisecond: every UUIDv7 made in an earlier
    millisecond sorts before it, every one made at or after ``when`` does not, so
    ``id < uuid7_floor(t)`` selects the rows made before ``t`` on an index over ``id``."""
    if when.tzinfo is None:
        raise ValueError("uuid7_floor needs an aware datetime")
    ms = (when - _EPOCH) // _MS  # exact integer arithmetic, floored
    if not 0 <= ms < 1 << 48:
        raise ValueError("outside UUIDv7's 48-bit millisecond range")
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62))
