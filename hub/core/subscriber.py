"""A subscriber: one open stream, its channels, and where its bytes go.

The core never touches sockets. A subscriber writes to a :class:`Sink`, which
the HTTP layer provides (straight to the transport, or through ASGI ``send``).
Writes never block: a sink buffers, and the hub cuts a subscriber whose
buffer grows past the limit. A sink whose connection is gone raises
:class:`SinkClosed`; the hub ends that subscriber and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hub.core.cursor import encode_cursor
from hub.core.event import Event
from hub.core.ids import ZERO, Key

# A shared placeholder for lists a stream does not use; never appended to.
NO_EVENTS: list[Any] = []


class Batch:
    """The frames of one channel's events of one loop tick, joined once.

    Every live single-channel subscriber of the channel gets these same bytes.
    ``framed`` lets a sink wrap them once for all its kind (for example in an
    HTTP/1.1 chunk) instead of once per subscriber.
    """

    __slots__ = ("_framed", "_framed_by", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._framed_by: Callable[[bytes], bytes] | None = None
        self._framed = b""

    def framed(self, frame: Callable[[bytes], bytes]) -> bytes:
        if self._framed_by is not frame:
            self._framed = frame(self.raw)
            self._framed_by = frame
        return self._framed


class SinkClosed(Exception):
    """Raised by a sink's writes once its connection is gone."""


class Sink(Protocol):
    """Where a subscriber's bytes go. All methods but :meth:`drained` return at once.

    ``write`` and ``write_batch`` raise :class:`SinkClosed` when the
    connection is gone. They must never call back into the hub: the hub
    calls them while it walks its own subscriber sets.
    """

    def write(self, data: bytes) -> None: ...

    def write_batch(self, batch: Batch) -> int:
        """Write ``batch``; return :meth:`buffered` after it (one call per delivery, not two)."""
        ...

    async def drained(self) -> None:
        """Return once the buffer is down to the sink's low-water mark, or the
        connection is gone (``abort`` included). Replays pace themselves with it."""
        ...

    def buffered(self) -> int:
        """Bytes accepted but not yet handed to the kernel."""
        ...

    def close(self, final: bytes = b"") -> None:
        """Write ``final``, end the stream cleanly, let the client go."""
        ...

    def abort(self) -> None:
        """Drop the connection now, discarding what is buffered."""
        ...


@dataclass(slots=True)
class Resume:
    """Where a stream resumes one channel.

    ``after`` None replays all that is kept. ``malformed`` streams get a
    ``hub.gap`` first whatever the history holds; ``requested`` is what the
    client asked for, as named in that ``hub.gap``.
    """

    after: Key | None
    requested: str | None = None
    malformed: bool = False


class Subscriber:
    """One stream. Single-channel streams share each event's frame; a
    multi-channel stream carries a composite cursor, so its ``id:`` line is
    its own (see :mod:`hub.core.cursor`)."""

    __slots__ = (
        "channels",
        "closed",
        "held",
        "held_bytes",
        "last_epoch",
        "multi",
        "opened",
        "out",
        "positions",
        "reason",
        "sent_bytes",
        "sent_events",
        "sink",
    )

    def __init__(self, channels: Sequence[str], sink: Sink, *, multi: bool = False) -> None:
        if not channels:
            raise ValueError("a subscriber needs at least one channel")
        if len(channels) > 1 and not multi:
            raise ValueError("several channels need a multi-channel stream")
        self.channels = list(channels)
        self.sink = sink
        self.multi = multi
        # Only multi-channel streams keep positions and queue their own frames
        # (memory per stream decides how many streams a process holds).
        self.positions: list[Key] = [ZERO] * len(channels) if multi else NO_EVENTS
        # Multi-channel frames queued during one flush, written in one go.
        self.out: list[bytes] = [] if multi else NO_EVENTS
        # Live events that arrive while the replay is being read (attach only),
        # and their size: held events count against the slow-consumer limit.
        self.held: list[Event] = NO_EVENTS
        self.held_bytes = 0
        self.last_epoch = 0
        self.closed = False
        self.reason = ""
        # For the line logged when the stream ends: when it opened, what it was sent
        # (events and their bytes; kept by the hub without work per delivery).
        self.opened = time.monotonic()
        self.sent_events = 0
        self.sent_bytes = 0

    def frame_for(self, index: int, event: Event) -> bytes:
        """The bytes of ``event`` for this stream, moving its cursor."""
        if not self.multi:
            return event.frame
        if event.key is None:
            return event.multi_body
        self.positions[index] = event.key
        return b"id: " + encode_cursor(self.positions).encode() + b"\n" + event.multi_body

    def __repr__(self) -> str:
        return f"Subscriber({self.channels!r}, multi={self.multi})"
