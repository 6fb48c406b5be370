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

import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence

from hub.brokers.idempotency import Records, fingerprint
from hub.core.broker import Broker, ChannelStats, Deliver
from hub.core.event import Event, Payload
from hub.core.ids import ZERO, IdClock, Key
from hub.core.ring import History, ReplayRing
from hub.core.throttle import Throttle

log = logging.getLogger(__name__)

# What keeping an event costs besides its frame: the Event, its (data-less)
# payload, id and key objects (tests/brokers/test_memory_bounds.py measures it).
EVENT_OVERHEAD = 400
# What a known channel costs besides its events: its entry, id clock, ring and name.
CHANNEL_OVERHEAD = 400
# Channels forgotten per sweep at most, so that a sweep never holds the loop long.
SWEEP_BATCH = 20_000


def cost(event: Event) -> int:
    """Bytes that keeping ``event`` costs (after :meth:`Event.keep`)."""
    return len(event.frame) + EVENT_OVERHEAD


class _Log:
    __slots__ = ("bytes", "clock", "ring")

    def __init__(self, capacity: int, after: Key) -> None:
        self.clock = IdClock(after)
        self.ring = ReplayRing(capacity)
        # Ids up to ``after`` may have been this channel's once (before it was
        # forgotten, or before this process): a cursor below it has a gap.
        self.ring.dropped = after
        self.bytes = CHANNEL_OVERHEAD


class MemoryBroker(Broker):
    """History in this process, bounded in count (``history_size`` per channel),
    in age (``history_ttl`` seconds) and in bytes (``history_max_bytes`` for all).

    Channels are kept in the order they were last published to: the sweep (run
    from the hub's heartbeat timer) forgets, from the front, the channels whose
    newest event expired, and the byte budget drops the oldest events of the
    least recently published channels first. A forgotten channel keeps nothing,
    its id clock included: a later publish starts a new clock above every id this
    process ever handed out (``_floor``), so ids stay increasing per channel.
    """

    name = "memory"

    def __init__(
        self,
        history_size: int = 1000,
        history_ttl: float = 0.0,
        history_max_bytes: int = 256 << 20,
        idempotency_seconds: float = 300.0,
    ) -> None:
        self.history_size = history_size
        # Publishes with an Idempotency-Key, remembered for idempotency_seconds.
        self.idempotency = Records(idempotency_seconds)
        self.ttl_ms = int(history_ttl * 1000)
        self.max_bytes = history_max_bytes
        # In the order they were last published to (an OrderedDict: O(1) to move a
        # channel to the end and to look at the front, however many were deleted).
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._deliver: Deliver | None = None
        # Ids below this were handed out by an earlier process, if ever.
        self.boot: Key = (time.time_ns() // 1_000_000, 0)
        # The highest id handed out by a channel since forgotten: new clocks start above it.
        self._floor: Key = self.boot
        # Bytes all kept events cost; events dropped to stay within max_bytes or expired.
        self.bytes = 0
        self.evicted = 0
        # The newest id the budget ever dropped: a cursor at or below it may have lost events.
        self._evicted_high: Key = ZERO
        self.expired = 0
        self.forgotten = 0
        self._over_budget = Throttle(log)

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None
        self._over_budget.flush()
        self.idempotency.close()

    @property
    def ready(self) -> bool:
        return self._deliver is not None

    async def publish(
        self, channel: str, payloads: Sequence[Payload], idempotency_key: str | None = None
    ) -> list[str]:
        return self.publish_now(channel, payloads, idempotency_key)

    def publish_now(
        self, channel: str, payloads: Sequence[Payload], idempotency_key: str | None = None
    ) -> list[str]:
        """:meth:`publish` with no await: the memory broker never waits (PublishesNow)."""
        if idempotency_key is not None:
            # Checked and recorded with no await in between: atomic in this process.
            print_ = fingerprint(payloads)
            earlier = self.idempotency.earlier(channel, idempotency_key, print_)
            if earlier is not None:
                return earlier
            ids = self._publish(channel, payloads)
            self.idempotency.remember(channel, idempotency_key, print_, ids)
            return ids
        return self._publish(channel, payloads)

    def _publish(self, channel: str, payloads: Sequence[Payload]) -> list[str]:
        if not payloads:
            return []
        logs = self._logs
        entry = logs.get(channel)
        if entry is None:
            entry = logs[channel] = _Log(self.history_size, self._floor)
            self.bytes += CHANNEL_OVERHEAD
        else:
            logs.move_to_end(channel)  # the most recently published go last
        clock = entry.clock
        first = clock.next()
        events = [Event(channel, first, payloads[0])]
        for payload in payloads[1:]:  # a batch
            events.append(Event(channel, clock.next(), payload))
        deliver = self._deliver
        ring = entry.ring
        added = 0
        for event in events:
            event.keep()
            added += cost(event)
            pushed = ring.append(event)
            if pushed is not None:
                added -= cost(pushed)
            if deliver is not None:
                deliver(event)
        entry.bytes += added
        self.bytes += added
        if self.ttl_ms and first[0] - self.ttl_ms > ring.oldest_ms:
            # This channel holds events older than the history's age (ids carry their time).
            self._expire(entry, first[0] - self.ttl_ms)
        if self.bytes > self.max_bytes:
            self._evict(channel, len(events))
        return [event.id for event in events if event.id is not None]  # each is numbered

    def _expire(self, entry: _Log, before_ms: int) -> None:
        first = entry.ring.first
        if first is not None and first.key is not None and first.key[0] < before_ms:
            gone = sum(cost(e) for e in entry.ring.expire(before_ms))
            entry.bytes -= gone
            self.bytes -= gone

    def _evict(self, current: str, fresh: int) -> None:
        """Drop the oldest events of the least recently published channels until
        history fits ``max_bytes`` again; never the ``fresh`` events just published."""
        dropped = 0
        logs = self._logs
        while self.bytes > self.max_bytes:
            name, entry = next(iter(logs.items()))  # the least recently published
            keep = fresh if name == current else 0
            while self.bytes > self.max_bytes and len(entry.ring) > keep:
                event = entry.ring.pop_oldest()
                assert event is not None
                assert event.key is not None
                self._evicted_high = max(self._evicted_high, event.key)
                size = cost(event)
                entry.bytes -= size
                self.bytes -= size
                dropped += 1
            if len(entry.ring):
                break  # within the budget again, or only this tick's events are left
            self._forget(name, entry)
        self.evicted += dropped
        self._over_budget.hit(
            "history over HUB_HISTORY_MAX_BYTES (%d bytes): dropped the oldest events of the least "
            "recently published channels (%d events dropped so far, %d bytes kept in %d channels)",
            self.max_bytes,
            self.evicted,
            self.bytes,
            len(self._logs),
        )

    def _forget(self, name: str, entry: _Log) -> None:
        del self._logs[name]
        self._floor = max(self._floor, entry.clock.last)
        self.bytes -= entry.bytes
        self.forgotten += 1

    def sweep(self) -> None:
        """Forget the channels whose every event expired (called from the hub's timer).

        The channels are in the order they were last published to, so this
        looks at expired channels only, and stops at the first live one.
        """
        if not self.ttl_ms:
            return
        before_ms = time.time_ns() // 1_000_000 - self.ttl_ms
        stale: list[str] = []
        for name, entry in self._logs.items():
            last = entry.ring.last
            if last is not None and last.key is not None and last.key[0] >= before_ms:
                break
            stale.append(name)
            if len(stale) >= SWEEP_BATCH:
                break
        for name in stale:
            entry = self._logs[name]
            self.expired += len(entry.ring)
            self._forget(name, entry)

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def history(self, channel: str, after: Key | None, limit: int | None = None) -> History:
        entry = self._logs.get(channel)
        now_ms = time.time_ns() // 1_000_000
        if entry is not None and self.ttl_ms:
            self._expire(entry, now_ms - self.ttl_ms)
            if not len(entry.ring):
                self._forget(channel, entry)
                entry = None
        if entry is None:
            # Nothing kept. The client missed nothing only if its cursor is one this
            # process handed out (not before boot, not past every id since forgotten),
            # newer than the history's age, and newer than anything the budget dropped.
            gap = (
                after is not None
                and after > ZERO
                and (
                    after < self.boot
                    or after > self._floor
                    or after <= self._evicted_high
                    or (self.ttl_ms > 0 and after[0] < now_ms - self.ttl_ms)
                    or not self.ttl_ms
                )
            )
            return History([], gap=gap, oldest=None, last=ZERO)
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

    def channel_names(self) -> Collection[str]:
        return self._logs.keys()

    def channel_stats(self, name: str) -> ChannelStats | None:
        entry = self._logs.get(name)
        if entry is None:
            return None
        last = entry.ring.last
        return ChannelStats(last.id if last else None, len(entry.ring))
