"""Validation of everything a client sends, as pure functions.

Publish bodies become :class:`~hub.core.event.Payload` lists; stream requests
become channel lists and :class:`~hub.core.subscriber.Resume` cursors. Every
failure is an :class:`InputError` carrying the HTTP status and a JSON-ready
message; nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hub.core.cursor import decode_cursor
from hub.core.event import Payload
from hub.core.ids import format_id, parse_id
from hub.core.subscriber import Resume

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RESERVED_PREFIX = "hub."
MAX_RETRY_MS = 86_400_000
MAX_BATCH = 1000
MAX_LAST_EVENT_ID = 2048
EARLIEST = "earliest"
_FIELDS = frozenset({"data", "event", "retry"})


class InputError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Limits:
    max_event_bytes: int = 65536
    max_body_bytes: int = 1 << 20
    max_channels_per_stream: int = 32


def bad(detail: str) -> InputError:
    return InputError(400, "bad_request", detail)


def check_channel(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InputError(
            400,
            "bad_channel",
            f"channel names are 1-128 characters of A-Z a-z 0-9 _ . : -, got {name[:200]!r}",
        )
    return name


def check_event_type(value: Any, where: str = "event") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not TYPE_RE.fullmatch(value):
        raise InputError(
            400, "bad_event_type", f"{where}: event types are 1-64 characters of A-Z a-z 0-9 _ . : -"
        )
    if value.startswith(RESERVED_PREFIX):
        raise InputError(
            400, "bad_event_type", f"{where}: the 'hub.' prefix is reserved for the hub's own events"
        )
    return value


def check_retry(value: Any, where: str = "retry") -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRY_MS:
        raise InputError(400, "bad_retry", f"{where}: retry is an integer from 0 to {MAX_RETRY_MS} (ms)")
    return value


def _check_size(size: int, limits: Limits, where: str) -> None:
    if size > limits.max_event_bytes:
        raise InputError(
            413,
            "event_too_large",
            f"{where}: data is {size} bytes on the wire, the limit is {limits.max_event_bytes}",
        )


def _payload_from_object(obj: Any, limits: Limits, where: str) -> Payload:
    if not isinstance(obj, dict):
        raise bad(f'{where}: expected an object like {{"data": ...}}')
    unknown = obj.keys() - _FIELDS
    if unknown:
        raise bad(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: data, event, retry"
            " (ids are assigned by the hub)"
        )
    if "data" not in obj:
        raise bad(f"{where}: missing field 'data'")
    data = orjson.dumps(obj["data"]).decode()
    _check_size(len(data), limits, where)
    return Payload(
        "json",
        data,
        check_event_type(obj.get("event"), f"{where}.event"),
        check_retry(obj.get("retry"), f"{where}.retry"),
    )


def parse_json_body(body: bytes, limits: Limits) -> tuple[list[Payload], bool]:
    """A JSON publish body -> payloads, and whether it was a batch."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad(f"body is not valid JSON: {exc}") from None
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_BATCH:
            raise bad(f"a batch holds 1 to {MAX_BATCH} events, got {len(value)}")
        return [_payload_from_object(item, limits, f"[{i}]") for i, item in enumerate(value)], True
    return [_payload_from_object(value, limits, "body")], False


def parse_text_body(body: bytes, query: Mapping[str, str], limits: Limits) -> Payload:
    """A ``text/plain`` publish body: the text is the data."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"text body is not valid UTF-8: {exc}") from None
    if not text:
        raise bad("empty text body: a browser never fires an event with empty data")
    _check_size(len(body), limits, "body")
    return Payload(
        "text",
        text,
        check_event_type(query.get("event"), "?event"),
        check_retry(query.get("retry"), "?retry"),
    )


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """``"text/plain; charset=UTF-8"`` -> ``("text/plain", "utf-8")``."""
    if not content_type:
        return "", None
    main, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return main.strip().lower(), charset


def parse_publish(
    content_type: str | None, body: bytes, query: Mapping[str, str], limits: Limits
) -> tuple[list[Payload], bool]:
    kind, charset = media_type(content_type)
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return parse_json_body(body, limits)
    if kind == "text/plain":
        if charset not in (None, "utf-8", "utf8", "us-ascii"):
            raise InputError(
                415, "unsupported_media_type", f"text bodies must be UTF-8, got charset={charset}"
            )
        return [parse_text_body(body, query, limits)], False
    raise InputError(
        415,
        "unsupported_media_type",
        f"Content-Type must be application/json or text/plain, got {content_type or 'none'}",
    )


def stream_channels(names: Sequence[str], limits: Limits) -> list[str]:
    """The channels of a ``/stream?channel=..`` request, deduplicated in order."""
    if not names:
        raise bad("name at least one channel: /stream?channel=a&channel=b")
    unique = list(dict.fromkeys(names))
    if len(unique) > limits.max_channels_per_stream:
        raise bad(f"at most {limits.max_channels_per_stream} channels per stream, got {len(unique)}")
    return [check_channel(n) for n in unique]


def pick_last_event_id(header: str | None, query: str | None) -> str:
    """The header wins over ``?last_event_id=`` (which a browser's first connect uses)."""
    value = header if header else (query or "")
    if len(value.encode()) > MAX_LAST_EVENT_ID:
        raise bad(f"Last-Event-ID is longer than {MAX_LAST_EVENT_ID} bytes")
    return value


def resumes_for(last_event_id: str, channels: int, multi: bool) -> list[Resume | None]:
    """Where each channel of a stream resumes; None means live only."""
    value = last_event_id.strip()
    if not value:
        return [None] * channels
    if value == EARLIEST:
        return [Resume(None) for _ in range(channels)]
    if not multi:
        key = parse_id(value)
        if key is None:
            return [Resume(None, requested=value, malformed=True)]
        return [Resume(key, requested=value)]
    positions = decode_cursor(value, channels)
    if positions is None:
        return [Resume(None, requested=None, malformed=True) for _ in range(channels)]
    return [Resume(p, requested=format_id(p)) for p in positions]
