"""The SSE subscriber protocol: the generator's hot path.

It does not parse HTTP chunked encoding or SSE fields.  Each event the generator
publishes carries exactly one ``"t":<19 digits>`` marker, so counting markers
counts deliveries and the 19 bytes after each marker give the publish time.
Chunk-size lines (hex digits + CRLF) never contain the marker; in the rare case
that a chunk boundary falls inside the digits, the event is still counted but its
latency is skipped (``unparsed``).
"""

from __future__ import annotations

import asyncio
from time import time_ns
from typing import cast

from loadtests.gen.stats import BUCKET_NS, N_BUCKETS, Stats
from loadtests.gen.target import TS_DIGITS, TS_MARKER

_MLEN = len(TS_MARKER)
_SPAN = _MLEN + TS_DIGITS
_KEEP = _MLEN - 1  # bytes kept from a scanned buffer in case a marker is split


class SseSubscriber(asyncio.Protocol):
    """One held SSE stream; updates the shared per-process Stats."""

    __slots__ = ("alive", "closed_by_us", "first", "request", "stats", "tail", "transport")

    def __init__(self, request: bytes, stats: Stats, first: asyncio.Future[bool]) -> None:
        self.request = request
        self.stats = stats
        self.first: asyncio.Future[bool] | None = first
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.closed_by_us = False
        self.alive = False  # got a 200 and not yet lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, don't check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.first is not None:
            self._on_first_bytes(data)
        stats = self.stats
        stats.bytes += len(data)
        buf = self.tail + data if self.tail else data
        i = buf.find(TS_MARKER)
        if i < 0:
            self.tail = buf[-_KEEP:]
            return
        now = time_ns()
        hist = stats.hist
        n = len(buf)
        while i >= 0:
            end = i + _SPAN
            if end > n:
                self.tail = buf[i:]  # timestamp still incomplete: wait for more bytes
                return
            try:
                lat = now - int(buf[i + _MLEN : end])
            except ValueError:
                stats.unparsed += 1
                lat = -1
            stats.received += 1
            if lat >= 0:
                b = lat // BUCKET_NS
                if b < N_BUCKETS:
                    hist[b] += 1
                else:
                    stats.overflow += 1
                if lat > stats.max_ns:
                    stats.max_ns = lat
            i = buf.find(TS_MARKER, end)
        self.tail = buf[max(end, n - _KEEP) :]

    def _on_first_bytes(self, data: bytes) -> None:
        first, self.first = self.first, None
        ok = data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
        if ok and b"\r\ncontent-length:" in data.split(b"\r\n\r\n", 1)[0].lower():
            # A stream never has a length. A 200 with one is a refusal the client is meant
            # to retry later (the hub answers EventSource clients so when it is full).
            ok = False
        if ok:
            self.alive = True
            self.stats.opened += 1
        else:
            self.stats.failed += 1
            self.closed_by_us = True  # a refusal is a failure, not a later drop
            if self.transport is not None:
                self.transport.close()
        if first is not None and not first.done():
            first.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.first is not None:
            first, self.first = self.first, None
            self.stats.failed += 1
            if not first.done():
                first.set_result(False)
        elif not self.closed_by_us:
            self.stats.closed_by_peer += 1

    def close(self) -> None:
        """Close from our side (not counted as a server-side drop)."""
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()
