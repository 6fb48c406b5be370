"""Streams that must end at a given time (a subscriber token's ``exp``).

One timer for the whole process, armed for the earliest deadline, never one
per stream; a stream that ends earlier is dropped from the heap when the heap
is mostly such leftovers, so the heap stays within twice the live deadlines.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Below this size the heap is not compacted: leftovers cost less than a scan.
COMPACT_FROM = 64


class Deadlines(Generic[T]):
    """Calls ``due(item, final)`` once ``item``'s wall-clock deadline has passed."""

    def __init__(self, due: Callable[[T, bytes], None], clock: Callable[[], float] = time.time) -> None:
        self._due = due
        self._clock = clock
        self._heap: list[tuple[float, int, T]] = []
        self._finals: dict[T, bytes] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")

    def __len__(self) -> int:
        return len(self._finals)

    def add(self, item: T, when: float, final: bytes) -> None:
        """End ``item`` at ``when`` (seconds since the epoch), writing ``final`` first."""
        self._finals[item] = final
        heapq.heappush(self._heap, (when, next(self._seq), item))
        if when < self._armed_for:
            self._arm()

    def discard(self, item: T) -> None:
        if self._finals.pop(item, None) is None:
            return
        if len(self._heap) > COMPACT_FROM and len(self._heap) > 2 * len(self._finals):
            self._heap = [entry for entry in self._heap if entry[2] in self._finals]
            heapq.heapify(self._heap)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = float("inf")

    def _arm(self) -> None:
        self.cancel()
        while self._heap and self._heap[0][2] not in self._finals:
            heapq.heappop(self._heap)
        if not self._heap:
            return
        when = self._heap[0][0]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, when - self._clock()), self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = float("inf")
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, item = heapq.heappop(self._heap)
            final = self._finals.pop(item, None)
            if final is not None:
                self._due(item, final)
        self._arm()
