"""The Redis wire layout as pure functions: pub/sub messages, stream entries, gap rules."""

from __future__ import annotations

import hashlib

import pytest

from hub.brokers.redis_codec import (
    SCRIPT,
    SCRIPT_SHA,
    decode_message,
    event_from_entry,
    history_from,
    script_args,
    stream_key,
    topic,
)
from hub.core.event import Payload
from hub.core.ids import Key


def test_keys_put_the_stream_beside_the_pubsub_channel() -> None:
    assert topic("hub", "orders") == "hub:orders"
    assert stream_key("hub", "orders") == "hub:orders:log"
    # The script finds the pub/sub channel by cutting ":log" off the stream key.
    assert stream_key("hub", "a:log")[: -len(":log")] == topic("hub", "a:log")


def test_the_script_sha_is_the_sha1_of_the_shipped_file() -> None:
    assert hashlib.sha1(SCRIPT.encode()).hexdigest() == SCRIPT_SHA
    assert 'redis.call("XADD"' in SCRIPT


def test_script_args_give_four_values_per_event_after_maxlen() -> None:
    args = script_args(100, [Payload("json", "{}"), Payload("text", "hi", "t", 5)])
    assert args == [100, "json", "{}", "", "", "text", "hi", "t", 5]


def test_the_script_envelope_becomes_numbered_events() -> None:
    raw = (
        b'{"hub":1,"events":[{"id":"5-0","kind":"json","data":"{\\"a\\":1}","event":"e","retry":7},'
        b'{"id":"5-1","kind":"text","data":"x\\/y"}]}'
    )
    first, second = decode_message("c", raw)
    assert (first.key, first.payload) == ((5, 0), Payload("json", '{"a":1}', "e", 7))
    assert first.frame == b'id: 5-0\nevent: e\nretry: 7\ndata: {"a":1}\n\n'
    assert (second.key, second.payload) == ((5, 1), Payload("text", "x/y"))


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b'{"event":"price","data":{"p":1}}', Payload("json", '{"p":1}', "price")),
        (b'{"data":"hello","retry":100}', Payload("json", '"hello"', None, 100)),
        (b'{"p": 1, "data": 2}', Payload("json", '{"p":1,"data":2}')),
        (b"[1, 2]", Payload("json", "[1,2]")),
        (b"42", Payload("json", "42")),
        (b"plain words", Payload("text", "plain words")),
    ],
)
def test_raw_publishes_are_delivered_without_an_id(raw: bytes, payload: Payload) -> None:
    (event,) = decode_message("c", raw)
    assert event.key is None
    assert event.payload == payload
    assert b"id:" not in event.frame


@pytest.mark.parametrize(
    "raw", [b'{"event":"bad type","data":1}', b'{"event":"hub.gap","data":1}', b'{"data":1,"retry":-1}']
)
def test_raw_envelopes_with_an_invalid_type_or_retry_are_dropped(raw: bytes) -> None:
    assert decode_message("c", raw) == []


def test_stream_entries_become_events_and_foreign_ones_are_skipped() -> None:
    event = event_from_entry("c", b"9-2", {b"k": b"text", b"d": b"hi", b"e": b"t", b"r": b"10"})
    assert event is not None
    assert (event.key, event.payload) == ((9, 2), Payload("text", "hi", "t", 10))
    assert event_from_entry("c", b"9-3", {b"other": b"1"}) is None


def _info(first: str | None, deleted: str | None, last: str) -> dict[str, object]:
    info: dict[str, object] = {"last-generated-id": last.encode()}
    info["first-entry"] = (first.encode(), {b"d": b"1"}) if first else None
    if deleted is not None:
        info["max-deleted-entry-id"] = deleted.encode()
    return info


@pytest.mark.parametrize(
    ("after", "first", "deleted", "gap"),
    [
        (None, "10-0", "9-0", False),  # replay all kept
        ((10, 0), "10-0", "9-0", False),
        ((9, 0), "10-0", "9-0", False),  # the newest dropped one: nothing after it was lost
        ((8, 0), "10-0", "9-0", True),  # events after it were trimmed
        ((0, 0), "1-0", "0-0", False),  # nothing ever trimmed
        ((5, 0), "10-0", "0-0", True),  # an id this stream never had: it was recreated
        ((8, 0), "10-0", None, True),  # Redis 6: before the first entry
        ((12, 0), "10-0", "9-0", False),
    ],
)
def test_a_gap_is_reported_exactly_when_events_after_the_cursor_are_gone(
    after: Key | None, first: str, deleted: str | None, gap: bool
) -> None:
    history = history_from("c", after, _info(first, deleted, "20-0"), [])
    assert history.gap is gap
    assert history.oldest == first
    assert history.last == (20, 0)


def test_a_missing_stream_is_a_gap_for_any_real_cursor() -> None:
    missing = Exception("ERR no such key")
    assert history_from("c", (5, 0), missing, []).gap is True
    assert history_from("c", None, missing, []).gap is False
    assert history_from("c", (0, 0), missing, []).gap is False
