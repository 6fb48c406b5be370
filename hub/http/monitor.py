"""The node's figures once a second: rates for the dashboard, the loop's lag.

One task per process (started and stopped with the app). Each second it
reads the counters the hub and the publish endpoint keep anyway, measures
how late the event loop ran it (``ssehub_event_loop_lag_seconds``), turns
the counters into per-second rates, and wakes the ``/_hub/stats`` streams
(:meth:`Monitor.updates`). With ``--workers`` it also writes this worker's
metrics snapshot (:func:`hub.http.metrics.write_snapshot`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from hub.core.ids import format_id
from hub.http.raw import AppState

log = logging.getLogger(__name__)

# Figures the dashboard plots: a minute of deliveries/s.
HISTORY = 60
# Quantiles over the last this many seconds.
WINDOW = 10
# Channels the dashboard lists: those with the most subscribers.
TOP_CHANNELS = 50


class Monitor:
    def __init__(
        self, state: AppState, interval: float = 1.0, each_tick: Callable[[], None] | None = None
    ) -> None:
        self.state = state
        self.interval = interval
        self.each_tick = each_tick
        self.latest: dict[str, Any] = {}
        self.deliveries: deque[float] = deque([0.0] * HISTORY, maxlen=HISTORY)
        self.listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._tick: asyncio.Future[None] | None = None
        self._closed = False
        self._last: dict[str, float] = {}
        self._last_at = time.monotonic()
        self._latency: deque[list[int]] = deque(maxlen=WINDOW + 1)
        self._delay: deque[list[int]] = deque(maxlen=WINDOW + 1)
        self._channel_events: dict[str, int] = {}

    def start(self) -> None:
        self._closed = False
        self._tick = asyncio.get_running_loop().create_future()
        self.latest = self.figures()
        self._task = asyncio.create_task(self._run(), name="hub-monitor")

    async def stop(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if self.each_tick is not None:  # the last word: what this process counted in all
                try:
                    self.each_tick()
                except Exception:
                    log.exception("writing the last figures failed")

    def close(self) -> None:
        """End every ``/_hub/stats`` stream (the node is draining)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        tick = self._tick
        if tick is not None and not tick.done():
            tick.set_result(None)
        if not self._closed:
            self._tick = asyncio.get_running_loop().create_future()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.state.stats.loop_lag = max(0.0, loop.time() - due)
            try:
                self.latest = self.figures()
                if self.each_tick is not None:
                    self.each_tick()
            except Exception:  # the figures must never stop: log, try again next second
                log.exception("computing the node's figures failed")
            self._wake()

    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """The figures now, then each second's, until the node drains."""
        self.listeners += 1
        try:
            yield self.latest
            while not self._closed and self._tick is not None:
                await asyncio.shield(self._tick)
                if self._closed:
                    return
                yield self.latest
        finally:
            self.listeners -= 1

    def figures(self) -> dict[str, Any]:
        now = time.monotonic()
        seconds = max(now - self._last_at, 1e-6)
        self._last_at = now
        st = self.state.stats
        hub = self.state.hub
        totals: dict[str, float] = {
            "published": st.events_published,
            "publishes": sum(st.publishes.values()),
            "refused_publishes": sum(n for code, n in st.publishes.items() if code >= 400),
        }
        out: dict[str, Any] = {"ts": int(time.time() * 1000), "loop_lag_ms": round(st.loop_lag * 1000, 2)}
        self._latency.append(st.publish_latency.snapshot())
        p99 = st.publish_latency.quantile(0.99, self._latency[0])
        out["publish_p99_ms"] = None if p99 is None else p99 * 1000
        if hub is not None:
            s = hub.stats
            totals.update(
                events=s.events,
                deliveries=s.deliveries,
                bytes=s.bytes_sent,
                slow_cut=s.slow_cut,
                gaps=s.gaps_too_old + s.gaps_malformed + s.gaps_broker,
                streams_opened=s.streams_opened,
            )
            self._delay.append(s.delay.snapshot())
            delay = s.delay.quantile(0.99, self._delay[0])
            out.update(
                broker=hub.broker.name,
                ready=hub.broker.ready and not self.state.draining,
                streams=len(hub.subscribers),
                channels=len(hub.channels),
                delay_p99_ms=None if delay is None else delay * 1000,
                top=self._top(seconds) if self.listeners else [],
            )
        rates = {k: max(0.0, (v - self._last.get(k, v)) / seconds) for k, v in totals.items()}
        self._last = totals
        self.deliveries.append(round(rates.get("deliveries", 0.0), 1))
        out.update(
            totals=totals,
            events_per_s=round(rates.get("events", 0.0), 1),
            published_per_s=round(rates["published"], 1),
            deliveries_per_s=round(rates.get("deliveries", 0.0), 1),
            bytes_per_s=round(rates.get("bytes", 0.0)),
            deliveries_history=list(self.deliveries),
        )
        return out

    def _top(self, seconds: float) -> list[dict[str, Any]]:
        """The channels with the most subscribers, with their event rates (only
        while a dashboard watches: it walks every channel)."""
        hub = self.state.hub
        assert hub is not None
        top = heapq.nlargest(TOP_CHANNELS, hub.channels.values(), key=lambda c: c.subscribers)
        before, self._channel_events = self._channel_events, {c.name: c.events for c in top}
        return [
            {
                "channel": c.name,
                "subscribers": c.subscribers,
                "events": c.events,
                "events_per_s": round(max(0, c.events - before.get(c.name, c.events)) / seconds, 1),
                "last_id": format_id(c.last_key) if c.last_key[0] or c.last_key[1] else None,
            }
            for c in top
        ]
