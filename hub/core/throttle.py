"""A warning that repeats is logged at most once a window, with a count.

Whatever a client or a Redis message can trigger over and over (a connection
gone under a write, an invalid message, a reconnect) must not be able to
flood the log: the first occurrence is logged at once, later ones within the
window are counted and reported in one line when the window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any


class Throttle:
    """One log line per ``seconds`` at most for a recurring condition, with its count.

    The first occurrence is logged at once; later ones within the window are
    counted, and reported in one line when the window ends (or with the next
    occurrence after it).
    """

    def __init__(self, logger: logging.Logger, seconds: float = 60.0, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.seconds = seconds
        self.level = level
        self.total = 0
        self._held = 0
        self._latest: tuple[str, tuple[Any, ...]] | None = None
        self._last = -float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, message: str, *args: Any, exc_info: BaseException | bool | None = None) -> None:
        """One occurrence: logged now (with ``exc_info``'s traceback, if given), or
        counted for the next line."""
        self.total += 1
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._emit(message, args, self._held, exc_info)
            return
        self._held += 1
        self._latest = (message, args)
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: reported with the next one
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._last + self.seconds - now, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line, if anything."""
        self._cancel()
        if self._held and self._latest is not None:
            message, args = self._latest
            self._emit(message, args, self._held - 1)

    def close(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _emit(
        self, message: str, args: tuple[Any, ...], before: int, exc_info: BaseException | bool | None = None
    ) -> None:
        self._cancel()
        self._last = time.monotonic()
        self._held = 0
        self._latest = None
        if before:
            message += " (and %d more like it in the last %ds; %d in all)"
            args = (*args, before, round(self.seconds), self.total)
        self.logger.log(self.level, message, *args, exc_info=exc_info)
