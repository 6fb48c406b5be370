"""Keep-alive HTTP/1.1 publisher on raw asyncio protocols.

Four drivers:
  * publish_rate        -- open loop, a fixed events/s schedule (latency scenario).
  * publish_closed_loop -- keeps at most `window` events in flight beyond what the
    subscribers have received on average, so the rate settles at what the system
    sustains (fan-out and channel scenarios).
  * publish_unpaced     -- each connection sends its next event as soon as the last
    one is answered; needs no subscribers (publish scenario).
  * publish_each_once   -- one event to each of many channels, each connection
    through its share of them, back to back (many scenario).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from loadtests.gen.target import Target

log = logging.getLogger(__name__)

POLL_S = 0.0005
# If nothing is delivered for this long while the window is full, the events in
# flight are presumed lost (dropped by the server) so the publisher cannot deadlock.
STALL_S = 0.5


class _PubConn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, minimal response parsing."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, don't check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        status = self._pop_response()
        if status is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def _pop_response(self) -> int | None:
        hend = self.buf.find(b"\r\n\r\n")
        if hend < 0:
            return None
        head = self.buf[:hend].lower()
        status = int(self.buf[9:12])
        body_start = hend + 4
        cl = head.find(b"content-length:")
        if cl >= 0:
            length = int(head[cl + 15 :].split(b"\r\n", 1)[0])
            end = body_start + length
            if len(self.buf) < end:
                return None
        elif b"chunked" in head:
            term = self.buf.find(b"0\r\n\r\n", hend + 2)
            if term < 0:
                return None
            end = term + 5
        else:
            end = body_start
        self.buf = self.buf[end:]
        return status

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(0)

    async def request(self, raw: bytes) -> int:
        """Send one request and wait for its status (0 if the connection died)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


@dataclass
class PublishResult:
    """What the publisher did."""

    accepted: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    presumed_lost: float = 0.0  # closed loop: events written off after a stall
    stalls: int = 0
    late: int = 0  # open loop: sends that started >10 ms after their slot

    def as_dict(self) -> dict[str, object]:
        rate = self.accepted / self.elapsed_s if self.elapsed_s else 0.0
        return {
            "accepted": self.accepted,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(rate, 1),
            "presumed_lost": round(self.presumed_lost, 1),
            "stalls": self.stalls,
            "late": self.late,
        }


class _Publisher:
    """Shared state of the publishing connections of one run."""

    def __init__(self, target: Target, channels: list[str], conns: int) -> None:
        self.target = target
        self.channels = channels
        self.n_conns = conns
        self.result = PublishResult()
        self.next_channel = 0
        self.in_flight = 0

    async def _open(self) -> _PubConn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_PubConn, self.target.host, self.target.port)
        return proto

    async def publish_one(self, conn: _PubConn) -> tuple[_PubConn, bool]:
        """Publish on the next channel; reconnect if the server closed the connection."""
        ch = self.channels[self.next_channel % len(self.channels)]
        self.next_channel += 1
        return await self.publish_to(conn, ch)

    async def publish_to(self, conn: _PubConn, ch: str) -> tuple[_PubConn, bool]:
        """Publish one event on ``ch`` and wait for the answer; reconnect if the
        server closed the connection."""
        if conn.lost:
            conn = await self._open()
        self.in_flight += 1
        status = await conn.request(self.target.publish_request(ch))
        self.in_flight -= 1
        res = self.result
        res.statuses[status] = res.statuses.get(status, 0) + 1
        ok = 200 <= status < 300
        if ok:
            res.accepted += 1
        else:
            res.errors += 1
        return conn, ok


async def publish_rate(
    target: Target, channels: list[str], rate: float, duration: float, conns: int = 4
) -> PublishResult:
    """Open loop: event i is due at t0 + i/rate; stops after `duration` seconds."""
    pub = _Publisher(target, channels, conns)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    total = int(rate * duration)
    counter = iter(range(total))

    async def run_conn() -> None:
        conn = await pub._open()
        for i in counter:
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                pub.result.late += 1
            conn, ok = await pub.publish_one(conn)
            if not ok:
                await asyncio.sleep(0.001)
        if conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(run_conn() for _ in range(conns)))
    pub.result.elapsed_s = loop.time() - t0
    return pub.result


async def publish_closed_loop(
    target: Target,
    channels: list[str],
    duration: float,
    window: float,
    fanout: float,
    received: Callable[[], int],
    conns: int = 4,
) -> PublishResult:
    """Publish as fast as deliveries keep up.

    `fanout` is the number of live subscribers per published event; an event is
    in flight until fanout deliveries have been counted for it (on average).
    """
    pub = _Publisher(target, channels, conns)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + duration
    fanout = max(fanout, 1.0)
    stall = {"seen": received(), "since": t0}

    def outstanding() -> float:
        return pub.result.accepted + pub.in_flight - pub.result.presumed_lost - received() / fanout

    async def wait_window() -> bool:
        while outstanding() >= window:
            now = loop.time()
            if now >= deadline:
                return False
            got = received()
            if got != stall["seen"]:
                stall["seen"], stall["since"] = got, now
            elif now - stall["since"] > STALL_S:
                pub.result.presumed_lost += outstanding()
                pub.result.stalls += 1
                stall["since"] = now
            await asyncio.sleep(POLL_S)
        return loop.time() < deadline

    async def run_conn() -> None:
        conn = await pub._open()
        while await wait_window():
            conn, ok = await pub.publish_one(conn)
            if not ok:
                await asyncio.sleep(0.001)
        if conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(run_conn() for _ in range(conns)))
    pub.result.elapsed_s = loop.time() - t0
    return pub.result


async def publish_unpaced(
    target: Target, channels: list[str], duration: float, conns: int = 8
) -> PublishResult:
    """Back to back for `duration` seconds: each of `conns` keep-alive connections
    sends its next event (to the next channel in turn) once the last one is answered."""
    return await publish_closed_loop(target, channels, duration, math.inf, 1.0, lambda: 0, conns)


async def publish_each_once(
    target: Target, channels: Sequence[str], conns: int = 8, timeout: float | None = None
) -> PublishResult:
    """One event to every channel: connection k takes ``channels[k::conns]`` and POSTs
    to each exactly once, in order, waiting for each answer.  A refused publish is
    counted (``errors``, ``statuses``), not retried.  Stops after ``timeout`` seconds
    if given (``elapsed_s`` then covers the part done)."""
    pub = _Publisher(target, [], conns)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def run_conn(k: int) -> None:
        conn = await pub._open()
        for i in range(k, len(channels), conns):
            conn, _ = await pub.publish_to(conn, channels[i])
        if conn.transport is not None:
            conn.transport.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(run_conn(k) for k in range(conns))), timeout)
    except TimeoutError:
        log.warning("publish_each_once: stopped after %.0f s, %d accepted", timeout, pub.result.accepted)
    pub.result.elapsed_s = loop.time() - t0
    return pub.result


def run_async(coro_factory: Callable[[], object]) -> object:
    """Run a coroutine on uvloop if available (publisher side of the coordinator)."""
    try:
        import uvloop

        return uvloop.run(coro_factory())  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
