"""What the hub writes to Redis and reads back: key names, the publish script, the envelope.

Shared by the broker and by :mod:`hub.publisher`, so that a service that
publishes straight to Redis produces exactly what a hub node would.

Layout, for a channel ``orders`` and the prefix ``hub``:

- ``hub:orders:log``: a stream holding the channel's recent events (fields
  ``k`` kind, ``d`` data, optional ``e`` event type and ``r`` retry); its
  entry ids are the SSE ids. Each publish trims it by size (``MAXLEN ~``) and
  by age (``MINID``, the TTL before Redis's ``TIME``), and sets it to expire a
  TTL later (``PEXPIRE``): an idle channel's stream goes by itself.
- ``hub:orders``: the pub/sub channel on which each publish is announced, as
  ``{"hub":1,"events":[{"id":..,"kind":..,"data":..,"event":..,"retry":..}]}``.
  Anything else published there is a raw producer's message (see
  :func:`decode_message`).

The prefix holds no ``:``, so the first ``:`` of a key ends it and no two
(prefix, channel) pairs share a key.

Everything read from Redis is untrusted: whoever can reach Redis can publish
anything. Nothing becomes an :class:`Event` unless the HTTP API would have
accepted it (:func:`hub.inputs.check_payload`); what does not is
:class:`Invalid`, which the broker drops and counts.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key, format_id, parse_id
from hub.core.ring import History
from hub.inputs import (
    MAX_BATCH,
    InputError,
    Limits,
    check_event_type,
    check_payload,
    check_retry,
    parse_json_body,
)

SCRIPT: str = resources.files("hub.brokers").joinpath("publish.lua").read_text(encoding="utf-8")
# What producers in other languages pass to EVALSHA (after one SCRIPT LOAD).
SCRIPT_SHA: str = hashlib.sha1(SCRIPT.encode()).hexdigest()

DEFAULT_LIMITS = Limits()
# The script's TTL of history when a caller gives none (its ``ttl=`` argument), and the
# largest it takes: HUB_HISTORY_TTL's default and bound.
DEFAULT_TTL_SECONDS = 3600.0
MAX_TTL_SECONDS = 365 * 86400
# An announced id whose millisecond part is further ahead of this node's clock
# is refused: Redis numbers entries by its own clock, which may differ a little.
MAX_FUTURE_MS = 5 * 60 * 1000
# How every announcement of the publish script starts.
ANNOUNCEMENT_PREFIX = b'{"hub":1,'
# Bytes an announcement may spend on one event besides its data: id, kind,
# event type, retry and punctuation (under 200).
_ANNOUNCED_EVENT_OVERHEAD = 256
# cjson writes a control character as \u00XX: six bytes for one.
_JSON_ESCAPE_GROWTH = 6

PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STREAM_SUFFIX = ":log"
_RAW_FIELDS = frozenset({"data", "event", "retry"})
_ANNOUNCED_FIELDS = frozenset({"id", "kind", "data", "event", "retry"})
_ANNOUNCED_REQUIRED = frozenset({"id", "kind", "data"})
_U64 = 2**64 - 1


class Invalid(Exception):
    """A pub/sub message or stream entry that the hub refuses: dropped and counted.

    ``announcement`` is True when the message claimed to be the publish script's
    announcement: whatever it says, the stream is read, as for a valid one.
    """

    def __init__(self, reason: str, announcement: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.announcement = announcement


def check_prefix(prefix: str) -> str:
    """A key prefix: 1-64 of A-Z a-z 0-9 _ . - (no ``:``, which ends the prefix in a key)."""
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"the Redis prefix is 1-64 characters of A-Z a-z 0-9 _ . - (no ':', which separates"
            f" it from the channel), got {prefix!r}"
        )
    return prefix


def topic(prefix: str, channel: str, tagged: bool = False) -> str:
    """The pub/sub channel of ``channel`` (on a cluster, ``tagged``: its shard channel,
    ``prefix:{channel}``, in the slot of its stream)."""
    return f"{prefix}:{{{channel}}}" if tagged else f"{prefix}:{channel}"


def stream_key(prefix: str, channel: str, tagged: bool = False) -> str:
    """The stream that keeps ``channel``'s history (on a cluster, ``tagged``:
    ``prefix:{channel}:log``, the hash tag putting it and everything else of the
    channel in one slot, so that the publish script is one call on one shard).
    Channel names and prefixes hold no braces: the tag is always the channel."""
    return f"{prefix}:{{{channel}}}{_STREAM_SUFFIX}" if tagged else f"{prefix}:{channel}{_STREAM_SUFFIX}"


def idempotency_record(stream: str, key: str) -> str:
    """The key of the record the publish script keeps for idempotency key ``key``
    of the channel whose stream is ``stream``. Its ``#`` (never in a prefix or a
    channel name) keeps it apart from every stream key and every other record."""
    return f"{stream[: -len(_STREAM_SUFFIX)]}:idem#{key}"


def parse_key(value: bytes | str) -> Key:
    """A stream id from Redis (always well formed) -> ``(ms, seq)``."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def addressable(key: Key) -> bool:
    """Whether Redis can read a stream from just after ``key`` (``XRANGE (key +``)."""
    return 0 <= key[0] <= _U64 and 0 <= key[1] <= _U64 and key != (_U64, _U64)


def ttl_ms(seconds: float) -> int:
    """A history TTL in seconds (``HUB_HISTORY_TTL``) -> the script's milliseconds.

    0 stays 0 (no age limit); anything above 0 is at least 1 ms.
    """
    if not 0 <= seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"the history TTL is 0 to {MAX_TTL_SECONDS} seconds, got {seconds!r}")
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def script_args(
    maxlen: int,
    payloads: Sequence[Payload],
    max_event_bytes: int | None = None,
    ttl: int | None = None,
    idempotency_key: str | None = None,
    idempotency_ms: int | None = None,
) -> list[str | int]:
    """ARGV of the publish script for ``payloads``; with ``max_event_bytes`` the
    script refuses larger data too. ``ttl`` is the history's TTL in milliseconds
    (0: no age limit); without it the script's default, an hour, applies.

    With an ``idempotency_key`` a second call with the same key (on the same
    channel, within ``idempotency_ms``, the script's default five minutes when
    None) stores nothing and returns the first call's ids."""
    args: list[str | int] = [maxlen]
    if ttl is not None:
        args.append(f"ttl={ttl}")
    if idempotency_key is not None:
        args.append(f"idem={idempotency_key}")
        if idempotency_ms is not None:
            args.append(f"idemttl={idempotency_ms}")
    if max_event_bytes is not None:
        args.append(max_event_bytes)
    for p in payloads:
        args += [p.kind, p.data, p.event or "", "" if p.retry is None else p.retry]
    return args


def script_ids(reply: Any) -> list[str]:
    """The ids a publish script call returned, as text."""
    return [i.decode() if isinstance(i, bytes) else str(i) for i in reply]


def announcement_cap(limits: Limits) -> int:
    """The largest announcement a publish the HTTP API accepts can produce.

    At most a body's worth of data (one text event of up to ``max_event_bytes``,
    or a JSON batch within ``max_body_bytes``), every byte of it escaped in the
    worst case, and up to :data:`MAX_BATCH` events' ids and fields.
    """
    data = max(limits.max_body_bytes, limits.max_event_bytes)
    return _JSON_ESCAPE_GROWTH * data + MAX_BATCH * _ANNOUNCED_EVENT_OVERHEAD


@dataclass(frozen=True, slots=True)
class Decoded:
    """A pub/sub message, checked.

    ``events``: a raw producer's event, unnumbered and live only. ``announced``:
    the newest id the publish script announced; those events are read from the
    stream, never taken from the message (see :class:`hub.brokers.redis.RedisBroker`).
    """

    events: list[Event] = field(default_factory=list)
    announced: Key | None = None


def decode_message(
    channel: str, raw: bytes, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> Decoded:
    """A pub/sub message -> what it carries; :class:`Invalid` when the HTTP API would refuse it.

    - the script's announcement ``{"hub":1,"events":[...]}``: its newest id;
    - ``{"data": ..}`` with optional ``event``/``retry`` and nothing else: one
      unnumbered event of that type, checked as that HTTP body would be;
    - any other JSON: one unnumbered event whose data is that JSON;
    - anything that is not JSON: one unnumbered text event (valid UTF-8).

    The size is checked before anything is parsed: a raw message is one event,
    so at most a body (``max_body_bytes``); an announcement at most
    :func:`announcement_cap`.
    """
    announcement = raw.startswith(ANNOUNCEMENT_PREFIX)
    cap = announcement_cap(limits) if announcement else limits.max_body_bytes
    if len(raw) > cap:
        raise Invalid(f"{len(raw)} bytes, over the limit of {cap}", announcement)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if announcement:
            raise Invalid("an announcement that is not valid JSON", True) from None
        return Decoded([Event(channel, None, _checked("text", raw, None, None, limits))])
    if isinstance(value, dict) and value.get("hub") == 1 and "events" in value:
        return Decoded(announced=_announced(value, limits, now_ms))
    try:
        if isinstance(value, dict) and "data" in value and value.keys() <= _RAW_FIELDS:
            payloads, _ = parse_json_body(raw, limits)
            payload = payloads[0]
        else:
            payload = check_payload("json", raw, None, None, limits, "message")
    except InputError as exc:
        raise Invalid(exc.detail) from None
    return Decoded([Event(channel, None, payload)])


def _checked(kind: Any, data: Any, event: Any, retry: Any, limits: Limits) -> Payload:
    try:
        return check_payload(kind, data, event, retry, limits)
    except InputError as exc:
        raise Invalid(exc.detail) from None


def _announced(value: dict[str, Any], limits: Limits, now_ms: int | None) -> Key:
    """The newest id of a well-formed announcement.

    Its events are never delivered from the message (the stream is read), so
    their data is not parsed here; everything else is checked as a publish is.
    """

    def refuse(reason: str) -> Invalid:
        return Invalid(f"announcement: {reason}", True)

    events = value["events"]
    if value.keys() != {"hub", "events"}:
        raise refuse("fields other than hub and events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise refuse(f"events is a list of 1 to {MAX_BATCH}")
    horizon = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) + MAX_FUTURE_MS
    newest = ZERO
    for i, item in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(item, dict) or not _ANNOUNCED_REQUIRED <= item.keys() <= _ANNOUNCED_FIELDS:
            raise refuse(f"{where} is an object of id, kind, data and optional event, retry")
        key = parse_id(item["id"]) if isinstance(item["id"], str) else None
        if key is None:
            raise refuse(f"{where}.id is not an id")
        if key <= newest:
            raise refuse(f"{where}.id {item['id']} does not follow {format_id(newest)}")
        if key[0] > horizon:
            raise refuse(f"{where}.id {item['id']} is ahead of this node's clock")
        newest = key
        kind, data = item["kind"], item["data"]
        if kind not in ("json", "text") or not isinstance(data, str) or (kind == "text" and not data):
            raise refuse(f"{where}: kind is json or text, data a string (non-empty text)")
        if len(data.encode()) > limits.max_event_bytes:
            raise refuse(f"{where}: data is over the limit of {limits.max_event_bytes}")
        try:
            check_event_type(item.get("event"), f"{where}.event")
            check_retry(item.get("retry"), f"{where}.retry")
        except InputError as exc:
            raise refuse(exc.detail) from None
    return newest


def event_from_entry(
    channel: str, entry_id: bytes | str, fields: Mapping[bytes, bytes], limits: Limits = DEFAULT_LIMITS
) -> Event:
    """One stream entry -> its Event; :class:`Invalid` unless the HTTP API would accept it."""
    data = fields.get(b"d")
    if data is None:
        raise Invalid("a stream entry without data (d)")
    kind = fields.get(b"k", b"json")
    event = fields.get(b"e")
    retry = fields.get(b"r")
    payload = _checked(
        kind.decode("latin-1"),
        data,
        event.decode("latin-1") if event is not None else None,
        retry.decode("latin-1") if retry is not None else None,
        limits,
    )
    return Event(channel, parse_key(entry_id), payload)


def read_entries(
    channel: str, entries: Any, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Event], list[tuple[Key, str]]]:
    """An ``XRANGE`` reply -> its valid events, and the ids of the entries skipped, with why."""
    events: list[Event] = []
    skipped: list[tuple[Key, str]] = []
    for entry_id, fields in entries or ():
        try:
            events.append(event_from_entry(channel, entry_id, fields or {}, limits))
        except Invalid as exc:
            skipped.append((parse_key(entry_id), exc.reason))
        except Exception as exc:  # one entry must never break a resume or a refill
            skipped.append((parse_key(entry_id), f"undecodable: {exc!r}"[:200]))
    return events, skipped


@dataclass(slots=True)
class StreamRead:
    """The stream after a cursor, as read from Redis.

    ``lost``: entries after the cursor were trimmed, or the cursor is one this
    stream never had. ``skipped``: invalid entries left out (each a loss too).
    ``renewed``: the stream began after the cursor and never lost an entry: the
    one that held the cursor is gone (expired, or deleted) and this one was
    created since. Whether that lost anything only the reader can tell.
    """

    events: list[Event]
    skipped: list[tuple[Key, str]]
    lost: bool
    first: Key | None
    last: Key
    # Where the next page starts, when a count cut this read short.
    more: Key | None = None
    renewed: bool = False

    def history(self) -> History:
        """The answer to a resume: a gap when anything after the cursor is not replayed."""
        oldest = format_id(self.first) if self.first is not None else None
        if self.skipped:
            # What follows the hub.gap starts here.
            oldest = self.events[0].id if self.events else None
        return History(
            self.events, gap=self.lost or bool(self.skipped), oldest=oldest, last=self.last, more=self.more
        )


def read_stream(
    channel: str, after: Key | None, info: Any, entries: Any, limits: Limits = DEFAULT_LIMITS
) -> StreamRead:
    """The stream after ``after``, out of ``XINFO STREAM`` and ``XRANGE (after +``.

    ``info`` is the exception Redis answered when the stream does not exist.
    """
    if isinstance(entries, Exception):
        raise entries
    events, skipped = read_entries(channel, entries, limits)
    if isinstance(info, Exception):
        # No stream: nothing was ever kept, or Redis lost it (restart without persistence).
        return StreamRead(events, skipped, after is not None and after > ZERO, None, ZERO)
    first_entry = info.get("first-entry")
    first = parse_key(first_entry[0]) if first_entry else None
    last = parse_key(info["last-generated-id"])
    deleted = info.get("max-deleted-entry-id")
    lost = renewed = False
    if after is not None:
        if deleted is None:  # before Redis 7: a cursor before the first entry may have lost some
            lost = first is not None and after < first
        else:
            dropped = parse_key(deleted)
            # Below ``dropped`` (XDEL raises it; trimming, by MAXLEN or by age, does
            # not): deleted. Between it and the first entry: trimmed away, or an id
            # this stream never had (it was recreated: expired, or a restart of Redis).
            lost = after < dropped or (first is not None and dropped < after < first)
            # Nothing ever left this stream (as many entries added as it holds): it
            # began after the cursor.
            added, length = info.get("entries-added"), info.get("length")
            renewed = lost and after < (first or ZERO) and added is not None and added == length
        # Past the newest id: this stream never handed it out.
        lost = lost or after > last
    return StreamRead(events, skipped, lost, first, last, renewed=renewed)


def history_from(
    channel: str, after: Key | None, info: Any, entries: Any, limits: Limits = DEFAULT_LIMITS
) -> History:
    """The answer to a resume from ``after``, out of ``XINFO STREAM`` and ``XRANGE (after +``."""
    return read_stream(channel, after, info, entries, limits).history()
