"""The fan-out core: channels, subscribers, replay-then-live, heartbeats.

How an event reaches every socket (see ARCHITECTURE.md):

1. The broker calls :meth:`Hub.dispatch` once per event. The event is queued
   on its channel and one flush per loop tick is scheduled (``call_soon``).
2. The flush joins each channel's queued frames into one :class:`Batch` and
   hands the same bytes to every live single-channel subscriber: one write
   per subscriber per tick, however many events. Multi-channel subscribers
   get their frames (with their own cursor) queued and written once too.
3. A subscriber whose sink holds more than ``max_pending_bytes`` is cut.
   A subscriber whose connection is gone (its sink raises) is ended. Either
   way only that subscriber is touched: an error while writing to one
   socket never leaves the flush, the heartbeat or the replay of another.

A new subscriber is first *held*: it is registered on its channels (and the
broker subscribed) before the history is read, live events meanwhile are
kept aside, and after the replay only held events newer than the replay are
written. No event falls between history and live, and none comes twice.
Replays and held events are written in slices as the socket drains, never
more than about ``max_pending_bytes`` queued at once; a subscriber whose
socket takes nothing for ``stall_seconds`` meanwhile is cut as slow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hub import sse
from hub.core.broker import Broker, Sweeps
from hub.core.deadlines import Deadlines
from hub.core.event import GAP_EVENT, Event
from hub.core.ids import ZERO, Key, format_id
from hub.core.stats import Buckets
from hub.core.subscriber import NO_EVENTS, Batch, Resume, SinkClosed, Subscriber
from hub.core.throttle import Throttle

log = logging.getLogger(__name__)

HEARTBEAT = sse.encode_comment()
# A flush that wrote to this many streams makes the next one linger this long.
LINGER_FROM_WRITES = 256
LINGER_SECONDS = 0.001
# Ticks per heartbeat interval: a stream idle for one interval gets its
# heartbeat within a quarter interval more.
_TICKS = 4
# Replays go out in slices of about this size, each once the socket has room,
# and are read from the broker in pages of about REPLAY_PAGE_BYTES: the first
# page is REPLAY_PAGE events, later ones grow or shrink with the events' size.
REPLAY_SLICE = 64 * 1024
REPLAY_PAGE = 16
REPLAY_PAGE_MAX = 1024
REPLAY_PAGE_BYTES = 256 * 1024
# One event in this many has its publish-to-socket delay measured (at the flush).
DELAY_SAMPLE = 64


def _next_page(page: int, events: list[Event]) -> int:
    """How many events to read next so that a page holds about REPLAY_PAGE_BYTES."""
    size = sum(len(e.frame) for e in events)
    if not events or size == 0:
        return page
    return max(1, min(REPLAY_PAGE_MAX, len(events) * REPLAY_PAGE_BYTES // size))


class Channel:
    """Local state of one channel while it has subscribers in this process."""

    __slots__ = ("events", "holding", "last_key", "live", "live_bytes", "multi", "name", "pending", "ready")

    def __init__(self, name: str, ready: asyncio.Future[None]) -> None:
        self.name = name
        self.live: dict[Subscriber, None] = {}
        self.multi: dict[Subscriber, int] = {}
        self.holding: dict[Subscriber, None] = {}
        self.pending: list[Event] = []
        self.last_key: Key = ZERO
        self.ready = ready
        # Events flushed, and bytes written to each live single-channel stream, since the
        # channel came: a stream's own counts are the difference over its life (see detach).
        self.events = 0
        self.live_bytes = 0

    @property
    def subscribers(self) -> int:
        return len(self.live) + len(self.multi) + len(self.holding)


@dataclass(slots=True)
class HubStats:
    events: int = 0
    deliveries: int = 0
    slow_cut: int = 0
    # Streams ended because their connection was gone under a write.
    gone: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    refused: int = 0
    # Bytes handed to stream sockets (events, replays, heartbeats, first bytes).
    bytes_sent: int = 0
    # Resumes served (a stream's channel with a Last-Event-ID) and the events they replayed.
    replays: int = 0
    replayed_events: int = 0
    # hub.gap events written, by cause: the resume's id was older than history
    # (or trimmed during its replay), malformed, or the broker lost events (Redis outage).
    gaps_too_old: int = 0
    gaps_malformed: int = 0
    gaps_broker: int = 0
    # Publish-to-socket delay (seconds, from the id's broker timestamp to the flush), sampled.
    delay: Buckets = field(default_factory=Buckets)


class Hub:
    def __init__(
        self,
        broker: Broker,
        *,
        heartbeat_seconds: float = 15.0,
        max_pending_bytes: int = 1 << 20,
        stall_seconds: float = 30.0,
    ) -> None:
        self.broker = broker
        self.heartbeat_seconds = heartbeat_seconds
        self.max_pending_bytes = max_pending_bytes
        self.stall_seconds = stall_seconds
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
        self._slow_log = Throttle(log)
        # Streams that end at a set time (a token's exp), under one timer.
        self.deadlines: Deadlines[Subscriber] = Deadlines(self._expire)
        self._fault_log = Throttle(log, level=logging.ERROR)
        self._sample = DELAY_SAMPLE

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.dispatch)
        self._ticker = asyncio.create_task(self._heartbeats(), name="hub-heartbeats")

    async def stop(self) -> None:
        self.deadlines.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        self.flush()
        self._slow_log.flush()
        self._fault_log.flush()
        await self.broker.stop()

    def close_all(self, final: Callable[[], bytes] | None = None) -> int:
        """End every stream cleanly (shutdown), each with its own ``final()``
        bytes (a jittered ``retry:``). Returns how many were open."""
        self.flush()
        subs = list(self.subscribers)
        for sub in subs:
            self._end(sub, "shutdown", final() if final is not None else b"")
        return len(subs)

    def end_at(self, sub: Subscriber, when: float, final: bytes) -> None:
        """End ``sub`` cleanly at ``when`` (seconds since the epoch), ``final`` its
        last bytes: a stream whose credential expires then."""
        if sub in self.subscribers and not sub.closed:
            self.deadlines.add(sub, when, final)

    def _expire(self, sub: Subscriber, final: bytes) -> None:
        if sub in self.subscribers and not sub.closed:
            self.flush()  # what it was owed goes out before its last bytes
            self._end(sub, "expired", final)

    def _end(self, sub: Subscriber, reason: str, final: bytes = b"") -> None:
        sub.reason = reason
        try:
            sub.sink.close(final)
        except Exception as exc:
            self._lost(sub, exc)
            return
        self.detach(sub)

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
        elif event.payload.event == GAP_EVENT:  # the broker lost events: every stream is told
            self.stats.gaps_broker += channel.subscribers
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
            try:
                self._flush_channel(channel)
            except Exception:
                # A bug, not a client: it must still not cost other channels their events.
                channel.pending = []
                self._fault_log.hit("flush of channel %s failed", channel.name, exc_info=True)
        if self._dirty_multi:
            subs, self._dirty_multi = self._dirty_multi, {}
            epoch = self.epoch
            for sub in subs:
                if not sub.closed:
                    data = b"".join(sub.out)
                    sub.out.clear()
                    sub.sent_bytes += len(data)
                    if self._write(sub, data):
                        sub.last_epoch = epoch

    def _flush_channel(self, channel: Channel) -> None:
        events = channel.pending
        if not events:
            return
        channel.pending = []
        channel.events += len(events)
        self._sample -= len(events)
        if self._sample <= 0:
            self._sample_delay(events[0])
        if channel.holding:
            self._hold(channel, events)
        if channel.live:
            raw = events[0].frame if len(events) == 1 else b"".join([e.frame for e in events])
            batch = Batch(raw)
            epoch = self.epoch
            limit = self.max_pending_bytes
            slow: list[Subscriber] | None = None
            failed: list[tuple[Subscriber, Exception]] | None = None
            for sub in channel.live:
                sink = sub.sink
                try:
                    if sink.write_batch(batch) > limit:
                        slow = slow or []
                        slow.append(sub)
                except Exception as exc:  # this subscriber's end, nobody else's
                    failed = failed or []
                    failed.append((sub, exc))
                sub.last_epoch = epoch
            self.stats.deliveries += len(channel.live) * len(events)
            self.stats.bytes_sent += len(channel.live) * len(raw)
            channel.live_bytes += len(raw)
            self._last_writes += len(channel.live)
            if failed:
                for sub, error in failed:
                    self._lost(sub, error)
            if slow:
                for sub in slow:
                    if not sub.closed:
                        self._cut_slow(sub)
        if channel.multi:
            for sub, index in channel.multi.items():
                out = sub.out
                for event in events:
                    out.append(sub.frame_for(index, event))
                self._dirty_multi[sub] = None
            self.stats.deliveries += len(channel.multi) * len(events)
            self._last_writes += len(channel.multi)

    def _sample_delay(self, event: Event) -> None:
        self._sample = DELAY_SAMPLE
        if event.key is not None:  # the id's first part is the broker's clock, in ms
            self.stats.delay.observe(max(0.0, time.time() - event.key[0] / 1000))

    # -- subscribe side -----------------------------------------------------

    async def attach(self, sub: Subscriber, resumes: Sequence[Resume | None], greeting: bytes = b"") -> None:
        """Register ``sub``, replay what it missed, then let it go live.

        ``resumes[i]`` is None for live-only on channel ``i``. ``greeting`` is
        written once every channel is subscribed at the broker, before any
        replay: a client that has seen it will not miss a later publish.
        Returns early, with ``sub`` detached, when the stream ended meanwhile
        (connection gone, too slow). Raises what the broker raises (then
        ``sub`` is detached).
        """
        if len(resumes) != len(sub.channels):
            raise ValueError("one resume per channel")
        self.subscribers[sub] = None
        self.stats.streams_opened += 1
        # Idle time starts now: the first heartbeat comes after a whole interval.
        sub.last_epoch = self.epoch
        sub.held = []
        sub.held_bytes = 0
        channels = [self._join(name, sub) for name in sub.channels]
        try:
            for channel in channels:
                await asyncio.shield(channel.ready)
            if greeting and not sub.closed:
                self._write(sub, greeting)
            floors: list[Key] = []
            for index, (channel, resume) in enumerate(zip(channels, resumes, strict=True)):
                if sub.closed:
                    return
                floors.append(await self._replay(sub, index, channel.name, resume))
            await self._catch_up(sub, channels, floors)
        except BaseException:
            self.detach(sub)
            raise
        if sub.closed:
            return
        self._go_live(sub, channels, floors)

    async def _replay(self, sub: Subscriber, index: int, name: str, resume: Resume | None) -> Key:
        """Write what ``sub`` missed on one channel; return the id it is now at.

        History is read a page at a time and each page written as the socket
        drains, so neither a long history nor a client that does not read holds
        more than a page in memory.
        """
        if resume is None:
            floor = await self.broker.last_key(name)
            if sub.multi:
                sub.positions[index] = floor
            return floor
        history = await self.broker.history(name, resume.after, REPLAY_PAGE)
        self.stats.replays += 1
        self.stats.replayed_events += len(history.events)
        if history.gap or resume.malformed:
            if resume.malformed:
                self.stats.gaps_malformed += 1
            else:
                self.stats.gaps_too_old += 1
            self._write(sub, self.gap_frame(name, resume.requested, history.oldest))
        if history.events and history.events[-1].key is not None:
            floor = history.events[-1].key
        else:
            # Nothing to replay: the client is at (or, for a bogus id, past) the newest.
            floor = history.last if resume.after is None else min(resume.after, history.last)
            if sub.multi:
                sub.positions[index] = floor
        await self._write_paced(sub, (sub.frame_for(index, event) for event in history.events))
        page = REPLAY_PAGE
        while history.more is not None and not sub.closed:
            after = history.more
            page = _next_page(page, history.events)
            history = await self.broker.history(name, after, page)
            self.stats.replayed_events += len(history.events)
            if history.gap:
                # Trimmed (or skipped as invalid) while this client was being replayed to.
                self.stats.gaps_too_old += 1
                self._write(sub, self.gap_frame(name, format_id(after), history.oldest))
            if history.events and history.events[-1].key is not None:
                floor = max(floor, history.events[-1].key)
            await self._write_paced(sub, (sub.frame_for(index, event) for event in history.events))
        return floor

    async def _catch_up(self, sub: Subscriber, channels: list[Channel], floors: list[Key]) -> None:
        """Write the live events held back during the replay, paced like it,
        until what is held is what one tick brings (then ``_go_live`` is quick)."""
        while sub.held and not sub.closed:
            for channel in channels:
                self._flush_channel(channel)
            held, sub.held = sub.held, []
            sub.held_bytes = 0
            await self._write_paced(sub, self._newer(sub, channels, floors, held))

    def _newer(
        self, sub: Subscriber, channels: list[Channel], floors: list[Key], held: list[Event]
    ) -> Iterable[bytes]:
        """Frames of the ``held`` events past each channel's floor, moving the floors."""
        index_of = {channel.name: i for i, channel in enumerate(channels)}
        for event in held:
            index = index_of[event.channel]
            key = event.key
            if key is not None:
                if key <= floors[index]:
                    continue
                floors[index] = key
            yield sub.frame_for(index, event)

    def _go_live(self, sub: Subscriber, channels: list[Channel], floors: list[Key]) -> None:
        # Whatever was dispatched but not yet flushed lands in ``held`` now, so
        # that it cannot also reach ``sub`` through the live path; from here to
        # joining the live set there is no ``await``.
        for channel in channels:
            self._flush_channel(channel)
        frames = list(self._newer(sub, channels, floors, sub.held))
        data = b"".join(frames)
        sub.held = NO_EVENTS
        sub.held_bytes = 0
        # The stream's live counts are its channels' counts from here to detach.
        sub.sent_events += len(frames)
        sub.sent_bytes += len(data)
        for index, channel in enumerate(channels):
            del channel.holding[sub]
            sub.sent_events -= channel.events
            if sub.multi:
                channel.multi[sub] = index
            else:
                channel.live[sub] = None
                sub.sent_bytes -= channel.live_bytes
        if data:
            self._write(sub, data)

    def _hold(self, channel: Channel, events: list[Event]) -> None:
        """Keep ``events`` aside for the subscribers of ``channel`` still replaying."""
        size = sum(len(e.frame) for e in events)
        over: list[Subscriber] = []
        for sub in channel.holding:
            sub.held.extend(events)
            sub.held_bytes += size
            if sub.held_bytes > self.max_pending_bytes:
                over.append(sub)
        for sub in over:
            # Live events pile up faster than the replay drains: as slow as any.
            self._cut_slow(sub)

    async def _write_paced(self, sub: Subscriber, frames: Iterable[bytes]) -> None:
        """Write ``frames`` in slices, each once the socket has room for it.

        At most one slice more than the sink's own low-water mark is queued at
        any time, however long the replay. A socket that takes nothing for
        ``stall_seconds`` is cut as slow.
        """
        parts: list[bytes] = []
        size = 0
        for frame in frames:
            parts.append(frame)
            size += len(frame)
            sub.sent_events += 1
            if size >= REPLAY_SLICE:
                if not await self._write_slice(sub, b"".join(parts)):
                    return
                parts.clear()
                size = 0
        if parts:
            await self._write_slice(sub, b"".join(parts))

    async def _write_slice(self, sub: Subscriber, data: bytes) -> bool:
        """One slice of a replay. Not cut for its size: a slice (64 KiB and the frame that
        crossed it) may be over HUB_MAX_PENDING_BYTES, and the next waits until the socket
        drained, so the hub never holds more than one; a socket that drains nothing for
        HUB_STALL_SECONDS is cut as slow."""
        sub.sent_bytes += len(data)
        if sub.closed or not self._put(sub, data):
            return False
        if sub.sink.buffered():
            try:
                await asyncio.wait_for(sub.sink.drained(), self.stall_seconds)
            except TimeoutError:
                if not sub.closed:
                    self._cut_slow(sub)
                return False
        return not sub.closed

    def _write(self, sub: Subscriber, data: bytes) -> bool:
        """Write outside the flush's hot loop; False when ``sub`` has ended (its connection
        gone, or its backlog past HUB_MAX_PENDING_BYTES: cut as slow)."""
        if not self._put(sub, data):
            return False
        if sub.sink.buffered() > self.max_pending_bytes:
            self._cut_slow(sub)
            return False
        return True

    def _put(self, sub: Subscriber, data: bytes) -> bool:
        """Hand ``data`` to ``sub``'s sink; False (and ``sub`` ended) when its connection is gone."""
        try:
            sub.sink.write(data)
        except Exception as exc:
            self._lost(sub, exc)
            return False
        self.stats.bytes_sent += len(data)
        return True

    def detach(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its stream is over). Safe to call more than once."""
        if sub not in self.subscribers:
            return
        del self.subscribers[sub]
        sub.closed = True
        self.deadlines.discard(sub)
        self.stats.streams_closed += 1
        self._dirty_multi.pop(sub, None)
        for name in sub.channels:
            channel = self.channels.get(name)
            if channel is None:
                continue
            if sub in channel.live:
                del channel.live[sub]
                sub.sent_events += channel.events
                sub.sent_bytes += channel.live_bytes
            elif sub in channel.multi:
                del channel.multi[sub]
                sub.sent_events += channel.events
            else:
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

    def _cut_slow(self, sub: Subscriber) -> None:
        self.stats.slow_cut += 1
        self._slow_log.hit(
            "cut a subscriber of %s that fell %d bytes behind (%d cut so far)",
            ",".join(sub.channels),
            max(sub.sink.buffered(), sub.held_bytes),
            self.stats.slow_cut,
        )
        sub.reason = "slow"
        self._abort(sub)

    def _lost(self, sub: Subscriber, exc: Exception) -> None:
        """``sub``'s sink failed: its connection is gone (or its sink has a bug)."""
        self.stats.gone += 1
        if not isinstance(exc, SinkClosed):
            self._fault_log.hit("writing to a stream of %s failed", ",".join(sub.channels), exc_info=exc)
        sub.reason = "gone"
        self._abort(sub)

    def _abort(self, sub: Subscriber) -> None:
        try:
            sub.sink.abort()
        except Exception:
            self._fault_log.hit("aborting a stream of %s failed", ",".join(sub.channels), exc_info=True)
        self.detach(sub)

    # -- heartbeats ---------------------------------------------------------

    async def _heartbeats(self) -> None:
        """One timer for the whole process, not one per stream."""
        interval = self.heartbeat_seconds / _TICKS
        sweeps = self.broker if isinstance(self.broker, Sweeps) else None
        while True:
            await asyncio.sleep(interval)
            self.epoch += 1
            self.beat()
            if sweeps is not None:
                try:
                    sweeps.sweep()
                except Exception:  # housekeeping must never stop the heartbeats
                    self._fault_log.hit("the broker's sweep failed", exc_info=True)

    def beat(self) -> None:
        """Heartbeat every stream that wrote nothing for a whole interval."""
        stale = self.epoch - _TICKS - 1
        for sub in list(self.subscribers):
            if sub.last_epoch <= stale and not sub.closed and self._write(sub, HEARTBEAT):
                sub.last_epoch = self.epoch

    # -- hub's own events ---------------------------------------------------

    @staticmethod
    def gap_frame(channel: str, requested: str | None, oldest: str | None) -> bytes:
        return Event.gap(channel, requested, oldest).frame
