"""The fan-out core: channels, subscribers, replay-then-live, heartbeats.

How an event reaches every socket (see ARCHITECTURE.md):

1. The broker calls :meth:`Hub.dispatch` once per event. The event is queued
   on its channel and one flush per loop tick is scheduled (``call_soon``).
2. The flush joins each channel's queued frames into one :class:`Batch` and
   hands the same bytes to every live single-channel subscriber: one write
   per subscriber per tick, however many events. Multi-channel subscribers
   get their frames (with their own cursor) queued and written once too.
3. A subscriber whose sink holds more than ``max_pending_bytes`` is cut.

A new subscriber is first *held*: it is registered on its channels (and the
broker subscribed) before the history is read, live events meanwhile are
kept aside, and after the replay only held events newer than the replay are
written. No event falls between history and live, and none comes twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hub import sse
from hub.brokers.base import Broker
from hub.core.event import Event
from hub.core.ids import ZERO, Key
from hub.core.subscriber import NO_EVENTS, Batch, Resume, Subscriber

log = logging.getLogger(__name__)

HEARTBEAT = sse.encode_comment()
# A flush that wrote to this many streams makes the next one linger this long.
LINGER_FROM_WRITES = 256
LINGER_SECONDS = 0.001
# Ticks per heartbeat interval: a stream idle for one interval gets its
# heartbeat within a quarter interval more.
_TICKS = 4


class Channel:
    """Local state of one channel while it has subscribers in this process."""

    __slots__ = ("holding", "last_key", "live", "multi", "name", "pending", "ready")

    def __init__(self, name: str, ready: asyncio.Future[None]) -> None:
        self.name = name
        self.live: dict[Subscriber, None] = {}
        self.multi: dict[Subscriber, int] = {}
        self.holding: dict[Subscriber, None] = {}
        self.pending: list[Event] = []
        self.last_key: Key = ZERO
        self.ready = ready

    @property
    def subscribers(self) -> int:
        return len(self.live) + len(self.multi) + len(self.holding)


@dataclass(slots=True)
class HubStats:
    events: int = 0
    deliveries: int = 0
    slow_cut: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    refused: int = 0


class Hub:
    def __init__(
        self,
        broker: Broker,
        *,
        heartbeat_seconds: float = 15.0,
        max_pending_bytes: int = 1 << 20,
    ) -> None:
        self.broker = broker
        self.heartbeat_seconds = heartbeat_seconds
        self.max_pending_bytes = max_pending_bytes
        self.channels: dict[str, Channel] = {}
        self.subscribers: dict[Subscriber, None] = {}
        self.stats = HubStats()
        self.epoch = 0
        self._dirty: list[Channel] = []
        self._dirty_multi: dict[Subscriber, None] = {}
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        # Writes the last flush made: a big fan-out waits a little for more
        # events so that each subscriber gets them in one write (see dispatch).
        self._last_writes = 0
        self._ticker: asyncio.Task[None] | None = None
        # Channels being unsubscribed at the broker, so that a new subscribe
        # of the same name waits for it and the broker sees them in order.
        self._leaving: dict[str, asyncio.Task[None]] = {}

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.dispatch)
        self._ticker = asyncio.create_task(self._heartbeats(), name="hub-heartbeats")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        self.flush()
        await self.broker.stop()

    def close_all(self, final: Callable[[], bytes] | None = None) -> int:
        """End every stream cleanly (shutdown), each with its own ``final()``
        bytes (a jittered ``retry:``). Returns how many were open."""
        self.flush()
        subs = list(self.subscribers)
        for sub in subs:
            self._end(sub, "shutdown", final() if final is not None else b"")
        return len(subs)

    # -- publish side -------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        """Called by the broker for every event of a channel we subscribed to."""
        self.stats.events += 1
        channel = self.channels.get(event.channel)
        if channel is None:
            return
        key = event.key
        if key is not None:
            if key <= channel.last_key:
                return  # a redelivery (e.g. the Redis refill after an outage)
            channel.last_key = key
        if not channel.pending:
            self._dirty.append(channel)
            if self._flush_handle is None:
                loop = asyncio.get_running_loop()
                if self._last_writes >= LINGER_FROM_WRITES:
                    # One write costs a syscall per subscriber whatever it carries; lingering a
                    # moment lets events published meanwhile share it (as Nagle does for TCP).
                    self._flush_handle = loop.call_later(LINGER_SECONDS, self.flush)
                else:
                    self._flush_handle = loop.call_soon(self.flush)
        channel.pending.append(event)

    def flush(self) -> None:
        """Write everything dispatched since the last flush."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._last_writes = 0
        dirty, self._dirty = self._dirty, []
        for channel in dirty:
            self._flush_channel(channel)
        if self._dirty_multi:
            subs, self._dirty_multi = self._dirty_multi, {}
            epoch = self.epoch
            for sub in subs:
                if not sub.closed:
                    data = b"".join(sub.out)
                    sub.out.clear()
                    sub.sink.write(data)
                    sub.last_epoch = epoch
                    self._check_pending(sub)

    def _flush_channel(self, channel: Channel) -> None:
        events = channel.pending
        if not events:
            return
        channel.pending = []
        for sub in channel.holding:
            sub.held.extend(events)
        if channel.live:
            raw = events[0].frame if len(events) == 1 else b"".join([e.frame for e in events])
            batch = Batch(raw)
            epoch = self.epoch
            limit = self.max_pending_bytes
            slow: list[Subscriber] | None = None
            for sub in channel.live:
                sink = sub.sink
                sink.write_batch(batch)
                sub.last_epoch = epoch
                if sink.buffered() > limit + sub.allowance:
                    slow = slow or []
                    slow.append(sub)
            self.stats.deliveries += len(channel.live) * len(events)
            self._last_writes += len(channel.live)
            if slow:
                for sub in slow:
                    self._cut_slow(sub)
        if channel.multi:
            for sub, index in channel.multi.items():
                out = sub.out
                for event in events:
                    out.append(sub.frame_for(index, event))
                self._dirty_multi[sub] = None
            self.stats.deliveries += len(channel.multi) * len(events)
            self._last_writes += len(channel.multi)

    # -- subscribe side -----------------------------------------------------

    async def attach(self, sub: Subscriber, resumes: Sequence[Resume | None], greeting: bytes = b"") -> None:
        """Register ``sub``, replay what it missed, then let it go live.

        ``resumes[i]`` is None for live-only on channel ``i``. ``greeting`` is
        written once every channel is subscribed at the broker, before any
        replay: a client that has seen it will not miss a later publish.
        Raises what the broker raises (then ``sub`` is detached).
        """
        if len(resumes) != len(sub.channels):
            raise ValueError("one resume per channel")
        self.subscribers[sub] = None
        self.stats.streams_opened += 1
        sub.held = []
        channels = [self._join(name, sub) for name in sub.channels]
        try:
            for channel in channels:
                await asyncio.shield(channel.ready)
            if greeting and not sub.closed:
                sub.sink.write(greeting)
            floors: list[Key] = []
            for index, (channel, resume) in enumerate(zip(channels, resumes, strict=True)):
                floors.append(await self._replay(sub, index, channel.name, resume))
        except BaseException:
            self.detach(sub)
            raise
        if sub.closed:
            return
        self._go_live(sub, channels, floors)

    async def _replay(self, sub: Subscriber, index: int, name: str, resume: Resume | None) -> Key:
        """Write what ``sub`` missed on one channel; return the id it is now at."""
        if resume is None:
            floor = await self.broker.last_key(name)
            if sub.multi:
                sub.positions[index] = floor
            return floor
        history = await self.broker.history(name, resume.after)
        parts: list[bytes] = []
        if history.gap or resume.malformed:
            parts.append(self.gap_frame(name, resume.requested, history.oldest))
        for event in history.events:
            parts.append(sub.frame_for(index, event))
        if history.events and history.events[-1].key is not None:
            floor = history.events[-1].key
        else:
            # Nothing to replay: the client is at (or, for a bogus id, past) the newest.
            floor = history.last if resume.after is None else min(resume.after, history.last)
            if sub.multi:
                sub.positions[index] = floor
        if parts and not sub.closed:
            data = b"".join(parts)
            # A resume may write a whole history at once; that is not the
            # client being slow, so its buffer limit grows by the replay.
            sub.allowance += len(data)
            sub.sink.write(data)
        return floor

    def _go_live(self, sub: Subscriber, channels: list[Channel], floors: list[Key]) -> None:
        parts: list[bytes] = []
        for index, channel in enumerate(channels):
            # Whatever was dispatched but not yet flushed lands in ``held``
            # now, so that it cannot also reach ``sub`` through the live path.
            self._flush_channel(channel)
            floor = floors[index]
            held = [e for e in sub.held if e.channel == channel.name and (e.key is None or e.key > floor)]
            parts.extend(sub.frame_for(index, e) for e in held)
            del channel.holding[sub]
            if sub.multi:
                channel.multi[sub] = index
            else:
                channel.live[sub] = None
        sub.held = NO_EVENTS
        if parts:
            sub.sink.write(b"".join(parts))
            self._check_pending(sub)

    def detach(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its stream is over). Safe to call more than once."""
        if sub not in self.subscribers:
            return
        del self.subscribers[sub]
        sub.closed = True
        self.stats.streams_closed += 1
        self._dirty_multi.pop(sub, None)
        for name in sub.channels:
            channel = self.channels.get(name)
            if channel is None:
                continue
            channel.live.pop(sub, None)
            channel.multi.pop(sub, None)
            channel.holding.pop(sub, None)
            if not channel.subscribers:
                self._leave(channel)

    def _join(self, name: str, sub: Subscriber) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            ready = asyncio.ensure_future(self._subscribe(name, self._leaving.get(name)))
            channel = self.channels[name] = Channel(name, ready)
        channel.holding[sub] = None
        return channel

    def _leave(self, channel: Channel) -> None:
        del self.channels[channel.name]
        if channel in self._dirty:
            self._dirty.remove(channel)
        name = channel.name
        task = asyncio.ensure_future(self._unsubscribe(channel))
        self._leaving[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._leaving.get(name) is done:
                del self._leaving[name]

        task.add_done_callback(forget)

    async def _subscribe(self, name: str, leaving: asyncio.Task[None] | None) -> None:
        if leaving is not None:
            await asyncio.shield(leaving)
        await self.broker.subscribe(name)

    async def _unsubscribe(self, channel: Channel) -> None:
        try:
            await asyncio.gather(channel.ready, return_exceptions=True)
            if channel.ready.exception() is None:
                await self.broker.unsubscribe(channel.name)
        except Exception as exc:  # the broker logs and recovers by itself
            log.debug("unsubscribe %s failed: %s", channel.name, exc)

    async def drain_unsubscribes(self) -> None:
        """Wait for pending broker unsubscribes (tests, shutdown)."""
        while self._leaving:
            await asyncio.gather(*self._leaving.values(), return_exceptions=True)

    # -- ending streams -----------------------------------------------------

    def _check_pending(self, sub: Subscriber) -> None:
        if sub.sink.buffered() > self.max_pending_bytes + sub.allowance:
            self._cut_slow(sub)

    def _cut_slow(self, sub: Subscriber) -> None:
        self.stats.slow_cut += 1
        if self.stats.slow_cut == 1 or self.stats.slow_cut % 1000 == 0:
            log.warning(
                "cut a subscriber of %s that fell %d bytes behind (%d cut so far)",
                ",".join(sub.channels),
                sub.sink.buffered(),
                self.stats.slow_cut,
            )
        sub.reason = "slow"
        sub.sink.abort()
        self.detach(sub)

    def _end(self, sub: Subscriber, reason: str, final: bytes = b"") -> None:
        sub.reason = reason
        sub.sink.close(final)
        self.detach(sub)

    # -- heartbeats ---------------------------------------------------------

    async def _heartbeats(self) -> None:
        """One timer for the whole process, not one per stream."""
        interval = self.heartbeat_seconds / _TICKS
        while True:
            await asyncio.sleep(interval)
            self.epoch += 1
            self.beat()

    def beat(self) -> None:
        """Heartbeat every stream that wrote nothing for a whole interval."""
        stale = self.epoch - _TICKS - 1
        for sub in list(self.subscribers):
            if sub.last_epoch <= stale and not sub.closed:
                sub.sink.write(HEARTBEAT)
                sub.last_epoch = self.epoch
                self._check_pending(sub)

    # -- hub's own events ---------------------------------------------------

    @staticmethod
    def gap_frame(channel: str, requested: str | None, oldest: str | None) -> bytes:
        return Event.gap(channel, requested, oldest).frame

    def channel_counts(self) -> dict[str, int]:
        return {name: ch.subscribers for name, ch in self.channels.items()}
