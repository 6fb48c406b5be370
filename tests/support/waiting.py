"""Waiting for a condition in async tests: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(check: Callable[[], Any], timeout: float = 5.0, every: float = 0.005) -> None:
    """Return once ``check()`` is true; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(every)
