"""What the hub writes to Redis and reads back: key names, the publish script, the envelope.

Shared by the broker and by :mod:`hub.publisher`, so that a service that
publishes straight to Redis produces exactly what a hub node would.

Layout, for a channel ``orders`` and the prefix ``hub``:

- ``hub:orders:log``: a stream holding the channel's recent events (fields
  ``k`` kind, ``d`` data, optional ``e`` event type and ``r`` retry); its
  entry ids are the SSE ids.
- ``hub:orders``: the pub/sub channel on which each publish is announced, as
  ``{"hub":1,"events":[{"id":..,"kind":..,"data":..,"event":..,"retry":..}]}``.
  Anything else published there is a raw producer's message (see
  :func:`decode_message`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import orjson

from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key, format_id
from hub.core.ring import History
from hub.inputs import InputError, check_event_type, check_retry

log = logging.getLogger(__name__)

SCRIPT: str = resources.files("hub.brokers").joinpath("publish.lua").read_text(encoding="utf-8")
# What producers in other languages pass to EVALSHA (after one SCRIPT LOAD).
SCRIPT_SHA: str = hashlib.sha1(SCRIPT.encode()).hexdigest()

_STREAM_SUFFIX = ":log"
_ENVELOPE_FIELDS = frozenset({"data", "event", "retry"})


def topic(prefix: str, channel: str) -> str:
    """The pub/sub channel of ``channel``."""
    return f"{prefix}:{channel}"


def stream_key(prefix: str, channel: str) -> str:
    """The stream that keeps ``channel``'s history."""
    return f"{prefix}:{channel}{_STREAM_SUFFIX}"


def parse_key(value: bytes | str) -> Key:
    """A stream id from Redis (always well formed) -> ``(ms, seq)``."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def script_args(maxlen: int, payloads: Sequence[Payload]) -> list[str | int]:
    """ARGV of the publish script for ``payloads``."""
    args: list[str | int] = [maxlen]
    for p in payloads:
        args += [p.kind, p.data, p.event or "", "" if p.retry is None else p.retry]
    return args


def event_from_entry(channel: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> Event | None:
    """One stream entry written by the script -> its Event; None if foreign."""
    data = fields.get(b"d")
    kind = fields.get(b"k", b"json")
    if data is None or kind not in (b"json", b"text"):
        return None
    event = fields.get(b"e")
    retry = fields.get(b"r")
    payload = Payload(
        "json" if kind == b"json" else "text",
        data.decode(),
        event.decode() if event is not None else None,
        int(retry) if retry is not None else None,
    )
    return Event(channel, parse_key(entry_id), payload)


def events_from_entries(channel: str, entries: Any) -> list[Event]:
    """An ``XRANGE`` reply -> its events, skipping entries the script did not write."""
    out = []
    for entry_id, fields in entries or ():
        event = event_from_entry(channel, entry_id, fields or {})
        if event is not None:
            out.append(event)
    return out


def decode_message(channel: str, raw: bytes) -> list[Event]:
    """A pub/sub message -> the events it carries (one ``orjson.loads``).

    - the script's envelope ``{"hub":1,"events":[...]}``: numbered events;
    - ``{"data": ..}`` with optional ``event``/``retry`` and nothing else: one
      unnumbered event of that type (an invalid type or retry drops it);
    - any other JSON: one unnumbered event whose data is that JSON;
    - anything that is not JSON: one unnumbered text event.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace")
        return [Event(channel, None, Payload("text", text))] if text else []
    if isinstance(value, dict):
        if value.get("hub") == 1 and "events" in value:
            return [_from_envelope(channel, item) for item in value["events"]]
        if "data" in value and value.keys() <= _ENVELOPE_FIELDS:
            try:
                event = check_event_type(value.get("event"))
                retry = check_retry(value.get("retry"))
            except InputError as exc:
                log.warning("dropped a raw PUBLISH on %s: %s", channel, exc.detail)
                return []
            data = orjson.dumps(value["data"]).decode()
            return [Event(channel, None, Payload("json", data, event, retry))]
    return [Event(channel, None, Payload("json", orjson.dumps(value).decode()))]


def _from_envelope(channel: str, item: dict[str, Any]) -> Event:
    payload = Payload(item["kind"], item["data"], item.get("event"), item.get("retry"))
    return Event(channel, parse_key(item["id"]), payload)


def history_from(channel: str, after: Key | None, info: Any, entries: Any) -> History:
    """The answer to a resume from ``after``, out of ``XINFO STREAM`` and ``XRANGE (after +``.

    ``info`` is the exception Redis answered when the stream does not exist.
    """
    if isinstance(entries, Exception):
        raise entries
    if isinstance(info, Exception):
        # No stream: nothing was ever kept, or Redis lost it (restart without persistence).
        return History([], gap=after is not None and after > ZERO, oldest=None, last=ZERO)
    first_entry = info.get("first-entry")
    first = parse_key(first_entry[0]) if first_entry else None
    deleted = info.get("max-deleted-entry-id")
    gap = False
    if after is not None:
        if deleted is None:  # before Redis 7: a cursor before the first entry may have lost some
            gap = first is not None and after < first
        else:
            dropped = parse_key(deleted)
            # Below ``dropped``: trimmed away. Between it and the first entry: an id
            # this stream never had (it was recreated, e.g. by a restart of Redis).
            gap = after < dropped or (first is not None and dropped < after < first)
    return History(
        events_from_entries(channel, entries),
        gap=gap,
        oldest=format_id(first) if first is not None else None,
        last=parse_key(info["last-generated-id"]),
    )
