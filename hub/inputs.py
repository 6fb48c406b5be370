"""Validation of everything a client sends, as pure functions.

Publish bodies become :class:`~hub.core.event.Payload` lists; stream requests
become channel lists and :class:`~hub.core.subscriber.Resume` cursors. Every
failure is an :class:`InputError` carrying the HTTP status and a JSON-ready
message; nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

import json
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
# How deep the data of a JSON event may nest arrays and objects (a scalar is 0,
# ``[]`` is 1). orjson cannot write more than 254 levels back out, and common
# subscriber parsers stop early (Ruby's JSON at 100, serde_json at 128), so the
# limit sits well below all of them, multi-channel envelope included.
MAX_JSON_DEPTH = 64
# Channel names no browser or URL client can address: they drop these path segments.
_DOT_SEGMENTS = frozenset({".", ".."})
_FIELDS = frozenset({"data", "event", "retry"})


class InputError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


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
    if name in _DOT_SEGMENTS:
        raise InputError(
            400,
            "bad_channel",
            f"{name!r} is not a channel name: browsers and URL clients remove it from paths",
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


def _utf8_size(text: str) -> int:
    """Bytes on the wire: characters, unless some are not ASCII (checked in C, no copy)."""
    return len(text) if text.isascii() else len(text.encode())


def _check_size(size: int, limits: Limits, where: str) -> None:
    if size > limits.max_event_bytes:
        raise InputError(
            413,
            "event_too_large",
            f"{where}: data is {size} bytes on the wire, the limit is {limits.max_event_bytes}",
        )


def _payload_from_object(obj: Any, limits: Limits, where: str) -> Payload:
    """One event object of a JSON body -> its payload. When orjson may have
    rounded an integer of its data (see :func:`_rounded`), its size is checked later."""
    if not isinstance(obj, dict):
        raise bad(f'{where}: expected an object like {{"data": ...}}')
    alone = len(obj) == 1 and "data" in obj  # most events: no type, no retry to check
    if not alone:
        unknown = obj.keys() - _FIELDS
        if unknown:
            raise bad(
                f"{where}: unknown field(s) {sorted(unknown)}; allowed: data, event, retry"
                " (ids are assigned by the hub)"
            )
        if "data" not in obj:
            raise bad(f"{where}: missing field 'data'")
    data = _compact(obj["data"], where)
    if not _rounded(data):
        _check_size(_utf8_size(data), limits, where)
    if alone:
        return Payload("json", data)
    return Payload(
        "json",
        data,
        check_event_type(obj.get("event"), f"{where}.event"),
        check_retry(obj.get("retry"), f"{where}.retry"),
    )


def _rounded(data: str) -> bool:
    """Whether orjson may have rounded an integer of ``data``: it reads integers
    beyond -2**63..2**64-1 as floats, and writes every float from 1e16 up with
    an exponent ("1.2345678901234568e+29"). Big floats and strings with "e+"
    in them answer True too; their data is parsed again, to no harm."""
    return "e+" in data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` arrays/objects (level by level: no recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return False


def _too_deep(where: str) -> InputError:
    return bad(f"{where}: data nests arrays/objects more than {MAX_JSON_DEPTH} levels deep")


def _compact(value: Any, where: str) -> str:
    """A data value as compact JSON on one line; refused when it nests too deep."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # orjson writes at most 254 levels
        if _deeper_than(value, MAX_JSON_DEPTH):
            raise _too_deep(where) from None
        raise bad(f"{where}: data cannot be encoded as JSON: {exc}") from None
    # Each level takes two brackets, and the depth is at most the number of
    # opening ones: most data needs no walk.
    if (
        len(text) > 2 * MAX_JSON_DEPTH
        and text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH
        and _deeper_than(value, MAX_JSON_DEPTH)
    ):
        raise _too_deep(where)
    return text.decode()


def _with_exact_integers(body: bytes, payloads: list[Payload], limits: Limits, batch: bool) -> list[Payload]:
    """``payloads`` with their data parsed again by the stdlib, whose integers
    have no size limit: each integer keeps its exact value.

    Only called once orjson accepted the same body and every event in it passed
    validation: the nesting is shallow, and no NaN or infinity is left, nor any
    number beyond a double's range (orjson refuses those, integers included,
    so no integer here has more than 309 digits).
    """
    try:
        value = json.loads(body.decode())
    except ValueError as exc:
        raise bad(f"body is not valid JSON: {exc}") from None
    out = []
    for i, (item, payload) in enumerate(zip(value if batch else [value], payloads, strict=True)):
        data = json.dumps(item["data"], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        _check_size(_utf8_size(data), limits, f"[{i}]" if batch else "body")
        out.append(Payload("json", data, payload.event, payload.retry))
    return out


def parse_json_body(body: bytes, limits: Limits) -> tuple[list[Payload], bool]:
    """A JSON publish body -> payloads, and whether it was a batch.

    The data is republished as compact JSON with the same meaning: integers
    exact whatever their size, other numbers as the IEEE doubles every JSON
    parser reads them as; of duplicate keys the last wins (as in ``JSON.parse``).
    Refused: data nested more than :data:`MAX_JSON_DEPTH` levels, and numbers
    beyond a double's range (``1e400``, NaN and Infinity are not JSON anyway).
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad(f"body is not valid JSON: {exc}") from None
    batch = isinstance(value, list)
    if batch:
        if not 1 <= len(value) <= MAX_BATCH:
            raise bad(f"a batch holds 1 to {MAX_BATCH} events, got {len(value)}")
        payloads = [_payload_from_object(item, limits, f"[{i}]") for i, item in enumerate(value)]
    else:
        payloads = [_payload_from_object(value, limits, "body")]
    if _rounded(payloads[0].data) if len(payloads) == 1 else any(_rounded(p.data) for p in payloads):
        payloads = _with_exact_integers(body, payloads, limits, batch)
    return payloads, batch


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


# Content types seen, parsed: publishers send the same few on every request.
_MEDIA_TYPES: dict[str, tuple[str, str | None]] = {}
_MEDIA_TYPES_MAX = 64


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """``"text/plain; charset=UTF-8"`` -> ``("text/plain", "utf-8")``."""
    if not content_type:
        return "", None
    known = _MEDIA_TYPES.get(content_type)
    if known is not None:
        return known
    parsed = _parse_media_type(content_type)
    if len(content_type) > 128:
        return parsed  # not kept: at most 64 short strings are
    if len(_MEDIA_TYPES) >= _MEDIA_TYPES_MAX:
        _MEDIA_TYPES.clear()  # a client sending ever new ones gains nothing but a parse
    _MEDIA_TYPES[content_type] = parsed
    return parsed


def _parse_media_type(content_type: str) -> tuple[str, str | None]:
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
        # Each channel's hub.gap names what was sent (a single-channel id, a
        # cursor of another channel list, or anything else).
        return [Resume(None, requested=value, malformed=True) for _ in range(channels)]
    return [Resume(p, requested=format_id(p)) for p in positions]


def check_payload(
    kind: Any, data: Any, event: Any, retry: Any, limits: Limits, where: str = "event"
) -> Payload:
    """An event that did not come as an HTTP body (read from Redis, or given to a
    producer), checked by the rules a publish is checked by.

    ``data`` is the event's data as the hub keeps it, ``str`` or UTF-8 ``bytes``:
    JSON text for kind ``json`` (returned compact, as a publish stores it), the
    text itself for kind ``text``. Raises :class:`InputError`.
    """
    if kind not in ("json", "text"):
        raise bad(f"{where}: kind is json or text")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{where}: data is not valid UTF-8") from None
    if not isinstance(data, str):
        raise bad(f"{where}: data is a string")
    event = check_event_type(event, f"{where}.event")
    retry = check_retry(retry, f"{where}.retry")
    if kind == "json":
        try:
            raw = data.encode()
            orjson.loads(raw)  # one JSON value and nothing more, before it is wrapped below
        except (UnicodeEncodeError, orjson.JSONDecodeError):
            raise bad(f"{where}: data is not valid JSON") from None
        # As the data of a JSON body: the same depth, number and size rules, the same compact form.
        (payload,), _ = parse_json_body(b'{"data":' + raw + b"}", limits)
        return Payload("json", payload.data, event, retry)
    if not data:
        raise bad(f"{where}: empty text: a browser never fires an event with empty data")
    try:
        size = len(data.encode())
    except UnicodeEncodeError:  # a lone surrogate
        raise bad(f"{where}: data is not valid UTF-8") from None
    _check_size(size, limits, where)
    return Payload("text", data, event, retry)


IDEMPOTENCY_KEY_RE = re.compile(r"[!-~]{1,255}")


def check_idempotency_key(value: str | None) -> str | None:
    """An ``Idempotency-Key``: 1-255 visible ASCII characters (``!`` to ``~``), or None.

    A publish with the key of an earlier one on the same channel (within
    HUB_IDEMPOTENCY_SECONDS) stores nothing and gets that publish's ids.
    """
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise bad("Idempotency-Key is 1-255 of the visible ASCII characters (! to ~), no spaces")
    return value


def idempotency_conflict() -> InputError:
    """A publish whose Idempotency-Key an earlier publish with other events used."""
    return InputError(
        422,
        "idempotency_conflict",
        "this Idempotency-Key was used for other events on this channel; use a new key for a new publish",
    )
