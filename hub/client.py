"""The client side of the CLI: ``ssehub publish`` and ``ssehub tail``.

``tail`` reads with the hub's own spec parser and reconnects like a browser's
EventSource: after the server's ``retry:`` delay, sending ``Last-Event-ID``.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import orjson

from hub.producer import retry_after
from hub.sse import SSEEvent, SSEParser

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit status 2."""


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _read_data(arg: str, text: bool) -> str:
    """The data argument, a file's text (``@path``) or stdin's (``-``).

    With ``text``, one final line break of a file or stdin is dropped, as a shell's
    ``$(...)`` drops it: ``echo hi | ssehub publish c --text`` sends ``hi``."""
    if arg == "-":
        try:
            raw = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"stdin is not UTF-8 text ({exc})") from None
    elif arg.startswith("@"):
        path = arg[1:]
        try:
            raw = Path(path).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a directory") from None
        except PermissionError:
            raise UsageError(f"{path}: permission denied") from None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc})") from None
    else:
        return arg
    if text:
        raw = _strip_line_break(raw)
    return raw


def _strip_line_break(text: str) -> str:
    for end in ("\r\n", "\n", "\r"):
        if text.endswith(end):
            return text[: -len(end)]
    return text


def _endpoint(url: str, channel: str) -> str:
    return f"{url.rstrip('/')}/channels/{quote(channel, safe='')}/events"


def publish_command(
    url: str,
    channel: str,
    data_arg: str,
    event: str | None,
    text: bool,
    token: str | None,
    retry: int | None = None,
) -> int:
    try:
        raw = _read_data(data_arg, text)
        if not text:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise UsageError(f"not JSON ({exc}); use --text to send text") from None
    except UsageError as exc:
        print(f"ssehub publish: {exc}", file=sys.stderr)
        return 2
    endpoint = _endpoint(url, channel)
    headers = _headers(token)
    try:
        if text:
            params: dict[str, str | int] = {"event": event} if event else {}
            if retry is not None:
                params["retry"] = retry
            headers["Content-Type"] = "text/plain; charset=utf-8"
            response = httpx.post(endpoint, content=raw.encode(), headers=headers, params=params)
        else:
            body: dict[str, object] = {"data": data}
            if event:
                body["event"] = event
            if retry is not None:
                body["retry"] = retry
            headers["Content-Type"] = "application/json"
            response = httpx.post(endpoint, content=orjson.dumps(body), headers=headers)
    except httpx.HTTPError as exc:
        print(f"ssehub publish: {url}: {exc}", file=sys.stderr)
        return 1
    print(response.text)
    return 0 if response.is_success else 1


# -- publish --lines ---------------------------------------------------------------------------

FLUSH_SECONDS = 0.05
FLUSH_LINES = 500
# Well under the hub's default HUB_MAX_BODY_BYTES (1 MiB), JSON escapes included.
FLUSH_BYTES = 256 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class LineSender:
    """Sends batches of lines, retrying while the hub is busy or away.

    A batch goes as one JSON array, each line a JSON string: a subscriber's data is
    the line as a JSON string (``JSON.parse(e.data)`` is the line; ``tail --json``
    prints it as the string). With ``text`` each line is a ``text/plain`` event of
    its own, the line exactly, one request per line. Lines that cannot be sent are
    counted in :attr:`failed`, never dropped silently.
    """

    def __init__(
        self,
        client: httpx.Client,
        endpoint: str,
        *,
        event: str | None,
        retry: int | None,
        text: bool,
        max_wait: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.event = event
        self.retry = retry
        self.text = text
        self.max_wait = max_wait
        self.sleep = sleep
        self.clock = clock
        self.sent = 0
        self.failed = 0

    def send(self, lines: list[str]) -> None:
        if self.text:
            for line in lines:
                self._deliver([line])
        else:
            self._deliver(lines)

    def _request(self, lines: list[str]) -> httpx.Request:
        if self.text:
            params: dict[str, str | int] = {"event": self.event} if self.event else {}
            if self.retry is not None:
                params["retry"] = self.retry
            return self.client.build_request(
                "POST",
                self.endpoint,
                content=lines[0].encode(),
                params=params,
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
        extra: dict[str, object] = {}
        if self.event:
            extra["event"] = self.event
        if self.retry is not None:
            extra["retry"] = self.retry
        body = orjson.dumps([{"data": line, **extra} for line in lines])
        return self.client.build_request(
            "POST", self.endpoint, content=body, headers={"Content-Type": "application/json"}
        )

    def _deliver(self, lines: list[str]) -> None:
        deadline = self.clock() + self.max_wait
        delay = BACKOFF_FIRST
        while True:
            problem: str
            wait: float | None = None
            try:
                response = self.client.send(self._request(lines))
            except httpx.TransportError as exc:
                problem = f"{self.endpoint}: {exc or type(exc).__name__}"
            else:
                if response.is_success:
                    self.sent += len(lines)
                    return
                problem = f"{response.status_code} {response.text.strip()[:300]}"
                if response.status_code not in RETRY_STATUSES:
                    if len(lines) > 1:
                        # One bad line (too large, say) must not cost the others: one by one.
                        for line in lines:
                            self._deliver([line])
                        return
                    log.error("a line was refused: %s", problem)
                    self.failed += 1
                    return
                wait = retry_after(response.headers.get("Retry-After"))
                wait = min(wait, 60.0) if wait is not None else None
            pause = max(delay, wait or 0.0)
            if self.clock() + pause > deadline:
                log.error("giving up on %d line(s) after %.0f s: %s", len(lines), self.max_wait, problem)
                self.failed += len(lines)
                return
            log.warning("%s; retrying in %.1f s", problem, pause)
            self.sleep(pause)
            delay = min(delay * 2, BACKOFF_MAX)


def read_batches(
    stream: BinaryIO, flush_seconds: float = FLUSH_SECONDS, flush_lines: int = FLUSH_LINES
) -> Iterator[list[str]]:
    """Non-empty lines of ``stream`` in batches: one as soon as ``flush_lines`` are in,
    or ``flush_seconds`` after the batch's first line came, or at the end.

    Nothing is read while the caller handles a batch: a slow hub slows the reader
    (back-pressure) instead of piling lines up in memory. Invalid UTF-8 is replaced
    with U+FFFD; empty lines are skipped (the hub refuses empty text).
    """
    fd = stream.fileno()
    pending: deque[str] = deque()
    partial = b""
    eof = False
    while True:
        batch: list[str] = []
        size = 0
        first_at: float | None = None
        while len(batch) < flush_lines and size < FLUSH_BYTES:
            if pending:
                line = pending.popleft()
                batch.append(line)
                size += len(line) + 16  # the JSON around it
                if first_at is None:
                    first_at = time.monotonic()
                continue
            if eof:
                break
            timeout = None if first_at is None else first_at + flush_seconds - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if chunk:
                *complete, partial = (partial + chunk).split(b"\n")
            else:
                eof = True
                complete, partial = [partial], b""
            for raw in complete:
                line = raw.removesuffix(b"\r").decode("utf-8", "replace")
                if line:
                    pending.append(line)
        if batch:
            yield batch
        if eof and not pending:
            return


def publish_lines_command(
    url: str,
    channel: str,
    event: str | None,
    text: bool,
    token: str | None,
    retry: int | None = None,
    max_wait: float = 60.0,
) -> int:
    """``ssehub publish CHANNEL --lines``: every non-empty line of stdin is one event."""
    sent = failed = 0
    try:
        with httpx.Client(headers=_headers(token), timeout=httpx.Timeout(10.0)) as client:
            sender = LineSender(
                client, _endpoint(url, channel), event=event, retry=retry, text=text, max_wait=max_wait
            )
            try:
                for batch in read_batches(sys.stdin.buffer):
                    sender.send(batch)
            finally:
                sent, failed = sender.sent, sender.failed
    except KeyboardInterrupt:
        pass
    if failed:
        print(f"ssehub publish: {failed} line(s) could not be sent ({sent} sent)", file=sys.stderr)
        return 1
    return 0


def _stream_url(url: str, channels: Sequence[str]) -> str:
    base = url.rstrip("/")
    if len(channels) == 1:
        return f"{base}/channels/{quote(channels[0], safe='')}/stream"
    return f"{base}/stream?" + "&".join(f"channel={quote(c, safe='')}" for c in channels)


def _show(event: SSEEvent) -> str:
    stamp = time.strftime("%H:%M:%S")
    kind = "" if event.type == "message" else f" [{event.type}]"
    return f"{stamp} {event.id}{kind} {event.data}"


def _own(event: SSEEvent) -> bool:
    """The hub's own events (``hub.gap``): about the stream, not of a channel."""
    return event.type.startswith("hub.")


def _parsed(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data


def as_json(event: SSEEvent, channels: Sequence[str]) -> dict[str, Any]:
    """One event as ``tail --json`` prints it: ``id``, ``event``, ``channel``, ``data``
    (parsed when it is JSON, else the text). A multi-channel stream's envelope is
    unwrapped; the hub's own events have no id (they do not move the cursor)."""
    data = _parsed(event.data)
    channel: Any = channels[0] if len(channels) == 1 else None
    if _own(event):
        if isinstance(data, dict) and isinstance(data.get("channel"), str):
            channel = data["channel"]
        return {"id": None, "event": event.type, "channel": channel, "data": data}
    if len(channels) > 1 and isinstance(data, dict) and "channel" in data and "data" in data:
        channel, data = data["channel"], data["data"]
    return {"id": event.id or None, "event": event.type, "channel": channel, "data": data}


def tail_command(
    url: str,
    channels: Sequence[str],
    last_event_id: str,
    raw: bool,
    count: int,
    token: str | None,
    json_lines: bool = False,
) -> int:
    """Print the stream's events; with ``count``, exit after that many events of the
    channels (the hub's own ``hub.*`` events are printed, not counted)."""
    stream_url = _stream_url(url, channels)
    seen = 0
    retry_ms = 3000
    out = sys.stdout
    timeout = httpx.Timeout(10.0, read=None)  # a stream may be quiet for long
    try:
        while True:
            headers = {"Accept": "text/event-stream", **_headers(token)}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            parser = SSEParser()
            try:
                with httpx.stream("GET", stream_url, headers=headers, timeout=timeout) as response:
                    if response.status_code != 200:
                        print(
                            f"ssehub tail: {response.status_code} {response.read().decode()}", file=sys.stderr
                        )
                        return 1
                    for chunk in response.iter_raw():
                        if raw:
                            out.write(chunk.decode("utf-8", "replace"))
                            out.flush()
                        for event in parser.feed(chunk):
                            if json_lines:
                                out.write(orjson.dumps(as_json(event, channels)).decode() + "\n")
                                out.flush()
                            elif not raw:
                                out.write(_show(event) + "\n")
                                out.flush()
                            if not _own(event):
                                seen += 1
                            if count and seen >= count:
                                return 0
                        last_event_id = parser.last_event_id
                        retry_ms = parser.retry if parser.retry is not None else retry_ms
            except httpx.HTTPError as exc:
                log.warning("stream interrupted: %s", exc)
            log.info("reconnecting in %d ms with Last-Event-ID %r", retry_ms, last_event_id)
            time.sleep(retry_ms / 1000)
    except KeyboardInterrupt:
        return 0
