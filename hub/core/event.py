"""The event as the fan-out core sees it: published once, encoded once.

An :class:`Event` carries its SSE frame, encoded when the event enters the
process, so that fan-out to N subscribers only appends the same bytes N times.
Multi-channel streams wrap the payload in ``{"channel": .., "data": ..}``; that
body is also built once per event, lazily, the first time such a stream needs it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import orjson

from hub import sse
from hub.core.ids import Key, format_id

PayloadKind = Literal["json", "text"]

GAP_EVENT = "hub.gap"


class Payload(NamedTuple):
    """What a publisher sent, validated: compact JSON bytes, or text.

    ``data`` is the exact value of the ``data:`` lines (JSON compact, on one
    line; text split into lines on the wire). Immutable; a named tuple rather than a
    frozen dataclass, whose ``__init__`` costs 0.5 us more on every publish.
    """

    kind: PayloadKind
    data: str
    event: str | None = None
    retry: int | None = None

    @property
    def wire_size(self) -> int:
        return len(self.data.encode())


class Event:
    """One published event of one channel, with its frames ready to write.

    ``key`` is None for an event that no broker numbered (a raw Redis
    ``PUBLISH`` from a producer that bypassed the hub's script): it is sent
    without an ``id:`` line, so it never moves a client's cursor, and it is
    live-only (never in history, never replayed).
    """

    __slots__ = ("_multi_body", "_payload", "channel", "frame", "id", "key")

    def __init__(self, channel: str, key: Key | None, payload: Payload) -> None:
        self.channel = channel
        self.key = key
        self.id = format_id(key) if key is not None else None
        self._payload = payload
        data = payload.data
        if (
            payload.event is None
            and payload.retry is None
            and self.id
            and "\n" not in data
            and "\r" not in data
        ):
            # Most events: one line of data (compact JSON always is) and an id of digits and
            # a dash, so the frame needs no line splitting (this is the publish hot path).
            self.frame: bytes = f"id: {self.id}\ndata: {data}\n\n".encode()
        else:
            self.frame = sse.encode_event(payload.data, id=self.id, event=payload.event, retry=payload.retry)
        self._multi_body: bytes | None = None

    @property
    def payload(self) -> Payload:
        p = self._payload
        if p.data:
            return p
        # Kept in history without its data (see keep): the frame holds it.
        return Payload(p.kind, _data_of(self.frame), p.event, p.retry)

    def keep(self) -> None:
        """Drop the payload's own copy of the data, which the frame also holds: an
        event kept in history then costs its frame and a few small objects."""
        p = self._payload
        if p.event is None and p.retry is None:
            self._payload = _NO_DATA_JSON if p.kind == "json" else _NO_DATA_TEXT  # shared
        elif p.data:
            self._payload = Payload(p.kind, "", p.event, p.retry)

    @property
    def multi_body(self) -> bytes:
        """The block for multi-channel streams, without its ``id:`` line.

        The cursor in ``id:`` differs per stream, so it is prepended per
        subscriber; everything else is shared.
        """
        body = self._multi_body
        if body is None:
            p = self.payload
            data = p.data if p.kind == "json" else orjson.dumps(p.data).decode()
            # orjson quotes the name: the envelope is valid JSON whatever the channel's charset.
            envelope = '{"channel":' + orjson.dumps(self.channel).decode() + ',"data":' + data + "}"
            parts: list[bytes] = []
            if p.event is not None:
                parts.append(b"event: " + p.event.encode() + b"\n")
            if p.retry is not None:
                parts.append(sse.encode_retry(p.retry))
            parts.append(sse.encode_data_lines(envelope))
            parts.append(b"\n")
            body = self._multi_body = b"".join(parts)
        return body

    @classmethod
    def gap(cls, channel: str, requested: str | None, oldest: str | None) -> Event:
        """The hub's own ``hub.gap``: events after ``requested`` were dropped
        from history; what follows starts at ``oldest``.

        It has no id (it must not move the client's cursor: a client that
        reconnects from the same place is told again), and its data already
        names the channel, so multi-channel streams get it unwrapped.
        """
        data = orjson.dumps({"channel": channel, "requested": requested, "oldest": oldest}).decode()
        event = cls(channel, None, Payload("json", data, event=GAP_EVENT))
        event._multi_body = event.frame
        return event

    def __repr__(self) -> str:
        return f"Event({self.channel!r}, {self.id!r}, {self.payload!r})"


# The payload of most kept events (no type, no retry): one object for all of them.
_NO_DATA_JSON = Payload("json", "")
_NO_DATA_TEXT = Payload("text", "")


def _data_of(frame: bytes) -> str:
    """The data of an encoded event: its ``data: `` lines, joined by LF (text
    line breaks are LF on the wire already, and JSON data is one line)."""
    return b"\n".join([line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")]).decode()
