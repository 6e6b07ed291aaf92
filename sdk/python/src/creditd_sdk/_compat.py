"""The few primitives that differ between the async client and the generated sync one.

``_sync_client.py`` is generated from ``_async_client.py`` by ``scripts/unasync.py``, which
drops ``async``/``await`` and maps ``AsyncX`` → ``X`` and ``x_async`` → ``x``; these pairs are
what that mapping lands on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

Lock = threading.Lock
AsyncLock = asyncio.Lock


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def sleep_async(seconds: float) -> None:
    await asyncio.sleep(seconds)


def run_io(fn: Callable[..., T], *args: Any) -> T:
    """Blocking file I/O (the spool): run inline in the sync client."""
    return fn(*args)


async def run_io_async(fn: Callable[..., T], *args: Any) -> T:
    """Blocking file I/O (the spool, with its fsyncs): off the event loop in the async client."""
    return await asyncio.to_thread(fn, *args)


# The innermost running capture_usage block or decorated call (sync or async).
current: ContextVar[Any] = ContextVar("creditd_capture", default=None)
