"""Server-Sent Events wire format: pure bytes in, bytes out.

Encoding helpers turn one published event into the exact ``text/event-stream``
bytes written to every subscriber (the block is built once per published event,
not per subscriber).  :class:`SSEParser` is an incremental parser that follows
the WHATWG HTML Living Standard, section 9.2.6 "Interpreting an event stream",
and is used by the test-suite and by clients that need to read a hub stream.

Nothing here does I/O, asyncio or HTTP.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = [
    "SSEEvent",
    "SSEParser",
    "encode_comment",
    "encode_data_lines",
    "encode_event",
    "encode_retry",
    "split_lines",
]

# The only line terminators of the event-stream grammar: CRLF, lone CR, lone LF.
# (str.splitlines() would also split on U+2028, U+0085, \v, \f, ... which the
# spec treats as ordinary characters.)  CRLF must come first in the alternation.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_BOM = "\ufeff"


def split_lines(text: str) -> list[str]:
    """Split *text* on CRLF, lone CR and lone LF only.

    ``"a\\n"`` gives ``["a", ""]`` and ``""`` gives ``[""]``: the result always
    has one more element than there are line terminators.
    """
    return _LINE_BREAK.split(text)


def _check_retry(ms: int) -> str:
    if ms < 0:
        raise ValueError(f"retry must be a non-negative number of milliseconds, got {ms!r}")
    return f"retry: {ms:d}\n"


def _data_lines(data: str) -> str:
    # One ``data: <line>\n`` per line of split_lines(data); a single regex
    # substitution instead of split + join.
    return "data: " + _LINE_BREAK.sub("\ndata: ", data) + "\n"


def encode_event(
    data: str,
    *,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one complete SSE block (terminated by a blank line) as UTF-8.

    Field order is ``id``, ``event``, ``retry`` (each only when given), then
    one ``data`` line per line of :func:`split_lines` (*data*), then the blank
    line.  A single space always follows the colon, so values that begin with
    a space survive the parser (which strips exactly one).

    Raises :class:`ValueError` if *id* contains CR, LF or NUL (a NUL would make
    clients ignore the id), if *event* contains CR or LF, or if *retry* is
    negative.
    """
    parts: list[str] = []
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError(f"SSE id must not contain CR, LF or NUL: {id!r}")
        parts.append(f"id: {id}\n")
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError(f"SSE event type must not contain CR or LF: {event!r}")
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(_check_retry(retry))
    parts.append(_data_lines(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_data_lines(data: str) -> bytes:
    """Encode only the ``data: <line>\\n`` lines of *data* (no blank line)."""
    return _data_lines(data).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment: ``:\\n`` for empty *text*, else ``: <line>\\n`` per line.

    No blank line is emitted: a blank line would end a block, and some clients
    surface that as an empty event.
    """
    if not text:
        return b":\n"
    return (": " + _LINE_BREAK.sub("\n: ", text) + "\n").encode("utf-8")


def encode_retry(ms: int) -> bytes:
    """Encode ``retry: <ms>\\n`` (no blank line).  ValueError if *ms* < 0."""
    return _check_retry(ms).encode("ascii")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    ``id`` is the parser's last event ID at dispatch time; ``retry`` is the
    reconnection time set by a ``retry`` field inside this event's own block,
    or ``None`` if the block had none.
    """

    type: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


def _parse_retry(value: str) -> int | None:
    """Return the reconnection time for a retry field value, or None to ignore it."""
    # str.isdigit() alone accepts non-ASCII digits (e.g. Arabic-Indic); the spec
    # wants ASCII digits only.
    if not (value and value.isascii() and value.isdigit()):
        return None
    try:
        return int(value)
    except ValueError:
        # Only reachable beyond sys.get_int_max_str_digits() (4300 by default).
        # Leading zeros do not change the value; anything still too long is an
        # absurd timeout that browsers (which parse into 64 bits) ignore too.
        try:
            return int(value.lstrip("0") or "0")
        except ValueError:
            return None


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG HTML 9.2.6).

    Feed it arbitrary byte chunks with :meth:`feed`; it returns the events
    dispatched by the lines completed so far.  Only the unterminated tail of
    the stream is kept between calls.

    Public attributes:

    ``last_event_id``
        The last event ID string, updated at every dispatch (blank line).
    ``retry``
        The reconnection time in milliseconds from the latest valid ``retry``
        field, or ``None`` if none was seen.
    ``comments``
        The text of every comment line (after ``:`` and one optional space).
    """

    __slots__ = (
        "_block_retry",
        "_bom_checked",
        "_data",
        "_decoder",
        "_event_type",
        "_id_buffer",
        "_pending",
        "_skip_lf",
        "comments",
        "last_event_id",
        "retry",
    )

    def __init__(self) -> None:
        self.last_event_id: str = ""
        self.retry: int | None = None
        self.comments: list[str] = []
        self._id_buffer = ""
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bom_checked = False
        self._skip_lf = False  # previous text ended in CR: a leading LF is its pair
        self._pending: list[str] = []  # pieces of the unterminated last line
        self._data: list[str] = []  # data buffer, one entry per data field
        self._event_type = ""
        self._block_retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume *chunk* and return the events it completes (possibly none)."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text[0] == _BOM:
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        # A CR at the very end is a complete line ending (CRLF would have been
        # matched as a pair); remember it so an LF starting the next chunk is
        # not taken as a second, empty line.
        self._skip_lf = text[-1] == "\r"

        lines = _LINE_BREAK.split(text)
        tail = lines.pop()
        if not lines:
            self._pending.append(tail)
            return []
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending = []
        if tail:
            self._pending.append(tail)

        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            field, colon, value = line.partition(":")
            if not field and colon:
                self.comments.append(value[1:] if value[:1] == " " else value)
                continue
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event_type = value
            elif field == "id":
                if "\0" not in value:
                    self._id_buffer = value
            elif field == "retry":
                ms = _parse_retry(value)
                if ms is not None:
                    self.retry = ms
                    self._block_retry = ms
            # any other field is ignored
        return events

    def _dispatch(self) -> SSEEvent | None:
        self.last_event_id = self._id_buffer
        block_retry = self._block_retry
        self._block_retry = None
        event_type = self._event_type
        self._event_type = ""
        if not self._data:
            return None
        # The spec appends value + LF per data field and then removes one
        # trailing LF, which is exactly a "\n".join of the values.
        data = "\n".join(self._data)
        self._data = []
        return SSEEvent(type=event_type or "message", data=data, id=self.last_event_id, retry=block_retry)

    def finish(self) -> None:
        """Signal end of stream: discard any incomplete line and block.

        Per the spec, pending data is discarded at EOF and an unterminated
        final block is never dispatched.  ``last_event_id``, ``retry`` and
        ``comments`` are kept (an ``id`` field inside the discarded block is
        discarded with it), and the parser is ready for a new stream, such as
        a reconnection, including stripping that stream's leading BOM.
        """
        self._decoder.decode(b"", final=True)
        self._id_buffer = self.last_event_id
        self._reset_stream()
