"""Fakes for the fan-out core: a sink that records, events made to order."""

from __future__ import annotations

from hub.core.event import Event, Payload
from hub.core.ids import Key
from hub.core.subscriber import Batch, SinkClosed
from hub.sse import SSEEvent, SSEParser


class RecordingSink:
    """A Sink that keeps what it was given and parses it like a client would."""

    def __init__(self, buffered: int = 0) -> None:
        self.data = bytearray()
        self.writes = 0
        self.pending = buffered
        self.closed = False
        self.aborted = False
        self.final = b""
        # The connection went away: writes raise, as a closed transport's do.
        self.gone = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert not self.aborted, "write after abort"
        if self.gone:
            raise SinkClosed
        self.data.extend(data)
        self.writes += 1

    def write_batch(self, batch: Batch) -> int:
        self.write(batch.raw)
        return self.buffered()

    def buffered(self) -> int:
        return self.pending

    async def drained(self) -> None:
        return None

    def close(self, final: bytes = b"") -> None:
        self.final = final
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def events(self) -> list[SSEEvent]:
        return SSEParser().feed(bytes(self.data))


def event(channel: str, key: Key, data: str = "1", kind: str = "json") -> Event:
    return Event(channel, key, Payload("json" if kind == "json" else "text", data))
