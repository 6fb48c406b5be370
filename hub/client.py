"""The client side of the CLI: ``ssehub publish`` and ``ssehub tail``.

``tail`` reads with the hub's own spec parser and reconnects like a browser's
EventSource: after the server's ``retry:`` delay, sending ``Last-Event-ID``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson

from hub.sse import SSEEvent, SSEParser

log = logging.getLogger(__name__)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _read_data(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        return Path(arg[1:]).read_text(encoding="utf-8")
    return arg


def publish_command(
    url: str, channel: str, data_arg: str, event: str | None, text: bool, token: str | None
) -> int:
    raw = _read_data(data_arg)
    endpoint = f"{url.rstrip('/')}/channels/{quote(channel, safe='')}/events"
    headers = _headers(token)
    try:
        if text:
            params = {"event": event} if event else {}
            headers["Content-Type"] = "text/plain; charset=utf-8"
            response = httpx.post(endpoint, content=raw.encode(), headers=headers, params=params)
        else:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                print(f"ssehub publish: not JSON ({exc}); use --text to send text", file=sys.stderr)
                return 2
            body: dict[str, object] = {"data": data}
            if event:
                body["event"] = event
            headers["Content-Type"] = "application/json"
            response = httpx.post(endpoint, content=orjson.dumps(body), headers=headers)
    except httpx.HTTPError as exc:
        print(f"ssehub publish: {url}: {exc}", file=sys.stderr)
        return 1
    print(response.text)
    return 0 if response.is_success else 1


def _stream_url(url: str, channels: Sequence[str]) -> str:
    base = url.rstrip("/")
    if len(channels) == 1:
        return f"{base}/channels/{quote(channels[0], safe='')}/stream"
    return f"{base}/stream?" + "&".join(f"channel={quote(c, safe='')}" for c in channels)


def _show(event: SSEEvent) -> str:
    stamp = time.strftime("%H:%M:%S")
    kind = "" if event.type == "message" else f" [{event.type}]"
    return f"{stamp} {event.id}{kind} {event.data}"


def tail_command(
    url: str, channels: Sequence[str], last_event_id: str, raw: bool, count: int, token: str | None
) -> int:
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
                            if not raw:
                                out.write(_show(event) + "\n")
                                out.flush()
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
