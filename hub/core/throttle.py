"""A warning that repeats is logged at most once a minute, with a count.

Whatever a client or a Redis message can trigger over and over (a dropped
connection under a write, an invalid message) must not be able to flood
the log: the first occurrence is logged at once, later ones are counted
and reported with the next line that is let through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Throttled:
    """``warn(msg, *args)`` logs at most once per ``every`` seconds.

    >>> slow = Throttled(logging.getLogger("hub"), every=60)
    >>> slow.warn("cut a slow subscriber of %s", "orders")
    """

    __slots__ = ("_clock", "_log", "_next", "_suppressed", "every", "level", "total")

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 60.0,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.every = every
        self.level = level
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0
        self.total = 0

    def warn(self, msg: str, *args: object, exc_info: BaseException | bool | None = None) -> bool:
        """Log (or count) one occurrence; True when it was logged."""
        self.total += 1
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return False
        self._next = now + self.every
        if self._suppressed:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, self._suppressed, self.every)
            self._suppressed = 0
        self._log.log(self.level, msg, *args, exc_info=exc_info)
        return True
