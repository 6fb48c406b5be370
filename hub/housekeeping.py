"""Give memory back to the OS after waves of streams closed.

Each stream's objects are freed when it closes, but glibc keeps the freed heap
pages, so after every wave of 10,000 disconnections the process's RSS stays a
little higher. ``malloc_trim(0)`` hands the free pages back. It runs from one
background task, only when at least ``min_closed`` streams ended since the
last trim, and costs a few milliseconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


malloc_trim = _load_trim()


async def trim_after_closes(closed: Callable[[], int], interval: float = 5.0, min_closed: int = 1000) -> None:
    """Trim the heap when ``closed()`` (a running count) grew by ``min_closed``."""
    if malloc_trim is None:
        return
    last = closed()
    while True:
        await asyncio.sleep(interval)
        now = closed()
        if now - last >= min_closed:
            last = now
            released = malloc_trim(0)
            log.debug("malloc_trim after %d closed streams: released=%s", now - last, released)
