"""A per-channel replay ring: the last N events, found by id in O(log N).

Used by the memory broker as the channel's whole history and by the Redis
broker as a cache in front of the Redis stream.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter

from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key

_key_of = attrgetter("key")
# Put in the slot of a dropped event, so that its memory goes now, not when the
# dead head of the list is cut off.
_GONE = Event("", (0, 0), Payload("text", "-"))


def _key(event: Event) -> Key:
    key = event.key
    assert key is not None, "the ring holds numbered events only"
    return key


@dataclass(slots=True)
class History:
    """The answer to "what came after this id?".

    ``gap`` is True when events after the asked-for id were dropped, so the
    client must be told (``hub.gap``); ``events`` then starts at ``oldest``.
    ``more`` is where the next page starts when a ``limit`` cut this one short
    (the last id read, which an invalid entry skipped by the broker may be).
    """

    events: list[Event] = field(default_factory=list)
    gap: bool = False
    oldest: str | None = None
    # The channel's newest id when the history was read (ZERO when none).
    last: Key = ZERO
    more: Key | None = None


class ReplayRing:
    """The newest ``capacity`` events of one channel, in id order.

    A plain list with a moving start index: appends are O(1) amortised, and
    the dead head is cut off in one slice once it grows as long as the ring.
    ``dropped`` is the highest id ever evicted (Redis calls it
    ``max-deleted-entry-id``): a cursor below it has lost events.
    """

    __slots__ = ("_events", "_start", "capacity", "dropped")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped: Key | None = None
        self._events: list[Event] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._events) - self._start

    @property
    def last(self) -> Event | None:
        return self._events[-1] if len(self) else None

    @property
    def first(self) -> Event | None:
        return self._events[self._start] if len(self) else None

    @property
    def oldest_ms(self) -> int:
        """The time part of the oldest kept id (a large number when empty)."""
        return _key(self._events[self._start])[0] if len(self._events) > self._start else 1 << 62

    def append(self, event: Event) -> Event | None:
        """Keep ``event``; return the one it pushed out, if the ring was full."""
        events = self._events
        if event.key is None:
            raise ValueError("only numbered events are kept in history")
        if events and event.key <= _key(events[-1]):
            raise ValueError(f"event {event.id} is not newer than {events[-1].id}")
        events.append(event)
        if len(events) - self._start > self.capacity:
            return self.pop_oldest()
        return None

    def pop_oldest(self) -> Event | None:
        """Drop the oldest event (a cursor before it now has a gap) and return it."""
        events = self._events
        if self._start >= len(events):
            return None
        oldest = events[self._start]
        events[self._start] = _GONE  # let it go now, not when the dead head is cut
        self.dropped = _key(oldest)
        self._start += 1
        if self._start >= max(self.capacity, len(events) - self._start):
            del events[: self._start]
            self._start = 0
        return oldest

    def expire(self, before_ms: int) -> list[Event]:
        """Drop the events numbered before ``before_ms`` (their id's time); return them."""
        gone: list[Event] = []
        while len(self) and _key(self._events[self._start])[0] < before_ms:
            event = self.pop_oldest()
            assert event is not None
            gone.append(event)
        return gone

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def after(self, key: Key, limit: int | None = None) -> list[Event]:
        """Events with an id above ``key``, oldest first."""
        events = self._events
        i = bisect_right(events, key, lo=self._start, key=_key_of)
        end = len(events) if limit is None else min(len(events), i + limit)
        return events[i:end]

    def covers(self, key: Key) -> bool:
        """True when every event after ``key`` that this ring ever held is still here."""
        return self.dropped is None or key >= self.dropped

    def since(self, key: Key | None, limit: int | None = None) -> History:
        """What a client that last saw ``key`` missed (``None``: replay all kept),
        at most ``limit`` events of it (``History.more`` says where to go on)."""
        first, last = self.first, self.last
        gap = key is not None and not self.covers(key)
        history = History(
            gap=gap,
            oldest=first.id if first is not None else None,
            last=_key(last) if last is not None else ZERO,
        )
        self.fill(history, key if key is not None and not gap else None, limit)
        return history

    def fill(self, history: History, key: Key | None, limit: int | None) -> None:
        """Put the events after ``key`` (all kept when None), at most ``limit``, in ``history``."""
        events = self.after(key if key is not None else (-1, -1), None if limit is None else limit + 1)
        history.more = None
        if limit is not None and len(events) > limit:
            del events[limit:]
            history.more = _key(events[-1])
        history.events = events
