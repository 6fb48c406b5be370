"""The embedded broker: one process, history in memory.

Each channel has an id clock and a replay ring. ``publish`` numbers, stores
and delivers synchronously, so a subscriber attached in the same loop tick
can never fall between history and live.

History is lost when the process stops. A cursor from before this process
started may have missed events that no longer exist anywhere, so it gets a
``hub.gap``; the channel's first event of this process is the oldest. So does
a cursor past the channel's newest id (one it never handed out), as with
the Redis broker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from hub.core.broker import Broker, ChannelStats, Deliver
from hub.core.event import Event, Payload
from hub.core.ids import ZERO, IdClock, Key, format_id
from hub.core.ring import History, ReplayRing


class _Log:
    __slots__ = ("clock", "ring")

    def __init__(self, capacity: int) -> None:
        self.clock = IdClock()
        self.ring = ReplayRing(capacity)


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, history_size: int = 1000) -> None:
        self.history_size = history_size
        self._logs: dict[str, _Log] = {}
        self._deliver: Deliver | None = None
        # Ids below this were handed out by an earlier process, if ever.
        self.boot: Key = (time.time_ns() // 1_000_000, 0)

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    @property
    def ready(self) -> bool:
        return self._deliver is not None

    async def publish(self, channel: str, payloads: Sequence[Payload]) -> list[str]:
        entry = self._logs.get(channel)
        if entry is None:
            entry = self._logs[channel] = _Log(self.history_size)
        keys = [entry.clock.next() for _ in payloads]
        events = [Event(channel, key, p) for key, p in zip(keys, payloads, strict=True)]
        deliver = self._deliver
        for event in events:
            entry.ring.append(event)
            if deliver is not None:
                deliver(event)
        return [format_id(key) for key in keys]

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def history(self, channel: str, after: Key | None, limit: int | None = None) -> History:
        entry = self._logs.get(channel)
        if entry is None:
            # Any id of this channel was handed out by an earlier process (or never).
            return History([], gap=after is not None and after > ZERO, oldest=None, last=ZERO)
        history = entry.ring.since(after, limit)
        if after is not None and (ZERO < after < self.boot or after > entry.clock.last):
            # From before this process, or an id this channel never handed out: what
            # the client saw is unknown, so it is told, and gets all that is kept.
            history.gap = True
            entry.ring.fill(history, None, limit)
        return history

    async def last_key(self, channel: str) -> Key:
        entry = self._logs.get(channel)
        return entry.clock.last if entry is not None else ZERO

    def stats(self) -> dict[str, ChannelStats]:
        out = {}
        for name, entry in self._logs.items():
            last = entry.ring.last
            out[name] = ChannelStats(last.id if last else None, len(entry.ring))
        return out
