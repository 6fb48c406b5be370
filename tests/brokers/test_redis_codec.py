"""The Redis wire layout as pure functions: pub/sub messages, stream entries, gap rules.

Everything read from Redis is untrusted: what the HTTP API would refuse is
:class:`Invalid`, never an event.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.brokers.redis_codec import (
    ANNOUNCEMENT_PREFIX,
    MAX_FUTURE_MS,
    SCRIPT,
    SCRIPT_SHA,
    Invalid,
    addressable,
    announcement_cap,
    check_prefix,
    decode_message,
    event_from_entry,
    history_from,
    read_entries,
    read_stream,
    script_args,
    stream_key,
    topic,
    ttl_ms,
)
from hub.core.event import Payload
from hub.core.ids import Key, parse_id
from hub.inputs import MAX_BATCH, InputError, Limits, parse_json_body, parse_text_body

NOW = 1_700_000_000_000
SMALL = Limits(max_event_bytes=64, max_body_bytes=256)


def http_accepts(payload: Payload, limits: Limits) -> bool:
    """Whether the HTTP API accepts this event, and would keep it exactly so."""
    try:
        if payload.kind == "text":
            query = {}
            if payload.event is not None:
                query["event"] = payload.event
            if payload.retry is not None:
                query["retry"] = str(payload.retry)
            return parse_text_body(payload.data.encode(), query, limits) == payload
        body = '{"data":' + payload.data
        if payload.event is not None:
            body += ',"event":' + orjson.dumps(payload.event).decode()
        if payload.retry is not None:
            body += f',"retry":{payload.retry}'
        (parsed,), _ = parse_json_body((body + "}").encode(), limits)
        return parsed == payload
    except InputError:
        return False


def announcement(*items: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"hub": 1, "events": list(items), **extra}, separators=(",", ":")).encode()


def item(id: str = f"{NOW}-0", kind: str = "json", data: str = "1", **fields: Any) -> dict[str, Any]:
    return {"id": id, "kind": kind, "data": data, **fields}


# -- keys and the script ------------------------------------------------------


def test_keys_put_the_stream_beside_the_pubsub_channel() -> None:
    assert topic("hub", "orders") == "hub:orders"
    assert stream_key("hub", "orders") == "hub:orders:log"
    # The script finds the pub/sub channel by cutting ":log" off the stream key.
    assert stream_key("hub", "a:log")[: -len(":log")] == topic("hub", "a:log")


def test_a_prefix_cannot_hold_the_separator_so_no_two_hubs_share_a_key() -> None:
    # Under "hub:t2" channel "orders" would be channel "t2:orders" of "hub".
    assert stream_key("hub", "t2:orders") == stream_key("hub:t2", "orders")
    for prefix in ("hub:t2", "", "a b", "x" * 65):
        with pytest.raises(ValueError, match="prefix"):
            check_prefix(prefix)
    assert check_prefix("hub_t2.v-1") == "hub_t2.v-1"


def test_the_script_sha_is_the_sha1_of_the_shipped_file() -> None:
    assert hashlib.sha1(SCRIPT.encode()).hexdigest() == SCRIPT_SHA
    assert 'redis.call("XADD"' in SCRIPT


def test_script_args_give_four_values_per_event_after_maxlen_and_the_optional_limit() -> None:
    payloads = [Payload("json", "{}"), Payload("text", "hi", "t", 5)]
    assert script_args(100, payloads) == [100, "json", "{}", "", "", "text", "hi", "t", 5]
    assert script_args(100, payloads, 65536) == [100, 65536, "json", "{}", "", "", "text", "hi", "t", 5]


def test_script_args_put_the_ttl_right_after_maxlen_as_a_named_value() -> None:
    payloads = [Payload("text", "hi")]
    assert script_args(100, payloads, 65536, 5000) == [100, "ttl=5000", 65536, "text", "hi", "", ""]
    assert script_args(100, payloads, ttl=0) == [100, "ttl=0", "text", "hi", "", ""]


@pytest.mark.parametrize(
    ("seconds", "ms"), [(3600, 3_600_000), (0, 0), (1.5, 1500), (0.0001, 1), (365 * 86400, 31_536_000_000)]
)
def test_a_ttl_in_seconds_is_the_scripts_milliseconds(seconds: float, ms: int) -> None:
    assert ttl_ms(seconds) == ms


@pytest.mark.parametrize("seconds", [-1, 365 * 86400 + 1, float("nan")])
def test_a_ttl_out_of_range_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="TTL"):
        ttl_ms(seconds)


def test_only_ids_redis_can_read_after_are_addressable() -> None:
    top = 2**64 - 1
    assert addressable((0, 0))
    assert addressable((top, top - 1))
    assert not addressable((top, top))
    assert not addressable((top + 1, 0))
    assert not addressable((5, top + 1))


# -- announcements --------------------------------------------------------------


def test_an_announcement_gives_its_newest_id_and_never_an_event() -> None:
    raw = (
        b'{"hub":1,"events":[{"id":"5-0","kind":"json","data":"{\\"a\\":1}","event":"e","retry":7},'
        b'{"id":"5-1","kind":"text","data":"x\\/y"}]}'
    )
    decoded = decode_message("c", raw, now_ms=NOW)
    assert decoded.announced == (5, 1)
    assert decoded.events == []  # the stream is read instead


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        # The wedge of issue #8: an id far ahead of any clock.
        (
            announcement(item(id="99999999999999-0", data='"pwned"', kind="text")),
            "ahead of this node's clock",
        ),
        (announcement(item(id=f"{NOW + MAX_FUTURE_MS + 1}-0")), "ahead of this node's clock"),
        (announcement(item(id="0-0")), "does not follow"),
        (announcement(item(id=f"{NOW}-1"), item(id=f"{NOW}-1")), "does not follow"),
        (announcement(item(id=f"{NOW}-2"), item(id=f"{NOW}-1")), "does not follow"),
        (announcement(item(id="18446744073709551616-0")), "not an id"),
        (announcement(item(id="5")), "not an id"),
        (announcement(item(id=5)), "not an id"),  # type: ignore[arg-type]
        # Only the hub itself says hub.gap; an event type is one SSE line of safe characters.
        (announcement(item(id="0-1", event="hub.gap", data='{"channel":"c"}')), "reserved"),
        (announcement(item(event="a b")), "event types"),
        (announcement(item(event="a\u2028b")), "event types"),
        (announcement(item(event="a\x00b")), "event types"),
        (announcement(item(event="")), "event types"),
        (announcement(item(retry=-1)), "retry"),
        (announcement(item(retry=86_400_001)), "retry"),
        (announcement(item(retry=True)), "retry"),
        (announcement(item(kind="xml")), "kind"),
        (announcement(item(kind="text", data="")), "kind"),
        (announcement(item(data=1)), "kind"),  # type: ignore[arg-type]
        (announcement(item(data='"' + "x" * 70000 + '"')), "over the limit"),
        (announcement({"id": f"{NOW}-0", "kind": "json"}), "object of id"),
        (announcement(item(extra=1)), "object of id"),
        (announcement(item(), more=1), "fields other than"),
        (announcement(), "1 to"),
        (b'{"hub":1,"events":{"id":"1-0"}}', "1 to"),
        (announcement(*[item(id=f"{NOW}-{n}") for n in range(MAX_BATCH + 1)]), "1 to"),
        (b'{"hub":1,"events":[{"id":"1-0","kind":"text","data":"\xff"}]}', "not valid JSON"),
    ],
)
def test_forged_or_malformed_announcements_are_invalid(raw: bytes, why: str) -> None:
    with pytest.raises(Invalid, match=why) as caught:
        decode_message("c", raw, now_ms=NOW)
    assert caught.value.announcement  # the stream is read all the same: it says what is new


def test_an_oversized_message_is_refused_before_it_is_parsed() -> None:
    # 300,000 events in 17 MB: refused by its size alone, at once.
    events = ",".join(f'{{"id":"{NOW}-{n}","kind":"text","data":"pwned"}}' for n in range(300_000))
    raw = b'{"hub":1,"events":[' + events.encode() + b"]}"
    assert len(raw) > 15_000_000 > announcement_cap(Limits())
    started = time.perf_counter()
    with pytest.raises(Invalid, match="over the limit of"):
        decode_message("c", raw, now_ms=NOW)
    assert time.perf_counter() - started < 0.05
    # Not JSON past the prefix: the size, not a parse, refused it.
    with pytest.raises(Invalid, match="over the limit"):
        decode_message("c", ANNOUNCEMENT_PREFIX + b"x" * announcement_cap(SMALL), SMALL)
    # A raw message is one event: at most a body.
    with pytest.raises(Invalid, match="over the limit of 256"):
        decode_message("c", b"x" * 257, SMALL)


def test_the_largest_announcement_a_valid_publish_makes_fits_the_cap() -> None:
    # One text event of the largest size, every byte a control character (\u00XX).
    data = "\x01" * SMALL.max_event_bytes
    raw = announcement(item(kind="text", data=data))
    assert json.dumps(data) == '"' + "\\u0001" * SMALL.max_event_bytes + '"'
    assert len(raw) <= announcement_cap(SMALL)
    assert decode_message("c", raw, SMALL, now_ms=NOW).announced == parse_id(f"{NOW}-0")


# -- raw messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b'{"event":"price","data":{"p":1}}', Payload("json", '{"p":1}', "price")),
        (b'{"data":"hello","retry":100}', Payload("json", '"hello"', None, 100)),
        (b'{"p": 1, "data": 2}', Payload("json", '{"p":1,"data":2}')),
        (b'{"hub": 1, "data": 2}', Payload("json", '{"hub":1,"data":2}')),
        (b"[1, 2]", Payload("json", "[1,2]")),
        (b"42", Payload("json", "42")),
        (b"18446744073709551616", Payload("json", "18446744073709551616")),
        (b"plain words", Payload("text", "plain words")),
        ("caf\u00e9 \u2028".encode(), Payload("text", "caf\u00e9 \u2028")),
    ],
)
def test_raw_publishes_are_delivered_without_an_id(raw: bytes, payload: Payload) -> None:
    decoded = decode_message("c", raw)
    assert decoded.announced is None
    (event,) = decoded.events
    assert event.key is None
    assert event.payload == payload
    assert b"id:" not in event.frame


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"bad type","data":1}',
        b'{"event":"hub.gap","data":1}',
        b'{"data":1,"retry":-1}',
        b"\xff not UTF-8",
        b"",
        b'{"data":"' + b"x" * 70 + b'"}',
        b"[" * 65 + b"]" * 65,
    ],
)
def test_raw_messages_the_http_api_would_refuse_are_invalid(raw: bytes) -> None:
    with pytest.raises(Invalid) as caught:
        decode_message("c", raw, SMALL)
    assert not caught.value.announcement


# -- stream entries ---------------------------------------------------------------


def test_stream_entries_become_events() -> None:
    event = event_from_entry("c", b"9-2", {b"k": b"text", b"d": b"hi", b"e": b"t", b"r": b"10"})
    assert (event.key, event.payload) == ((9, 2), Payload("text", "hi", "t", 10))
    default = event_from_entry("c", b"9-3", {b"d": b'{"a": 1}'})
    assert (default.key, default.payload) == ((9, 3), Payload("json", '{"a":1}'))


@pytest.mark.parametrize(
    "fields",
    [
        {b"k": b"text", b"d": b"\xff"},
        {b"k": b"json", b"d": b'"\xff"'},
        {b"k": b"json", b"d": b"{not json"},
        {b"k": b"json", b"d": b"1, 2"},
        {b"k": b"json", b"d": b""},
        {b"k": b"text", b"d": b""},
        {b"k": b"xml", b"d": b"1"},
        {b"other": b"1"},
        {b"k": b"json", b"d": b"1", b"e": b"hub.gap"},
        {b"k": b"json", b"d": b"1", b"e": b"a b"},
        {b"k": b"json", b"d": b"1", b"e": "a\u2028".encode()},
        {b"k": b"json", b"d": b"1", b"r": b"86400001"},
        {b"k": b"json", b"d": b"1", b"r": b"-1"},
        {b"k": b"text", b"d": b"x" * 65},
    ],
)
def test_stream_entries_the_http_api_would_refuse_are_invalid(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(Invalid):
        event_from_entry("c", b"9-2", fields, SMALL)


def test_invalid_entries_are_skipped_and_a_resume_across_them_is_a_gap() -> None:
    entries = [
        (b"5-0", {b"k": b"json", b"d": b"1"}),
        (b"6-0", {b"k": b"text", b"d": b"\xff"}),
        (b"7-0", {b"k": b"json", b"d": b"3"}),
    ]
    events, skipped = read_entries("c", entries)
    assert [e.key for e in events] == [(5, 0), (7, 0)]
    assert [key for key, _ in skipped] == [(6, 0)]
    assert "UTF-8" in skipped[0][1]

    history = history_from("c", (4, 0), _info("5-0", "0-0", "7-0"), entries)
    assert history.gap  # the client can never get 6-0: it is told
    assert [e.id for e in history.events] == ["5-0", "7-0"]
    assert history.oldest == "5-0"
    assert not history_from("c", (6, 0), _info("5-0", "0-0", "7-0"), entries[2:]).gap


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
        ((20, 0), "10-0", "9-0", False),  # the newest id
        ((20, 1), "10-0", "9-0", True),  # past the newest: never handed out
    ],
)
def test_a_gap_is_reported_exactly_when_events_after_the_cursor_are_gone(
    after: Key | None, first: str, deleted: str | None, gap: bool
) -> None:
    history = history_from("c", after, _info(first, deleted, "20-0"), [])
    assert history.gap is gap
    assert history.oldest == first
    assert history.last == (20, 0)


def test_a_stream_begun_after_the_cursor_that_never_lost_an_entry_is_renewed() -> None:
    # Expired while idle, then published to again: a gap for a resume, and the
    # reader may tell it from a trim (entries-added counts what was ever added).
    info = {**_info("10-0", "0-0", "20-0"), "length": 2, "entries-added": 2}
    read = read_stream("c", (5, 0), info, [])
    assert read.lost
    assert read.renewed
    assert read.history().gap
    trimmed = read_stream("c", (5, 0), {**info, "entries-added": 7}, [])
    assert trimmed.lost
    assert not trimmed.renewed
    assert not read_stream("c", (10, 0), info, []).renewed  # the cursor is in this stream
    assert not read_stream("c", (5, 0), Exception("ERR no such key"), []).renewed


def test_a_missing_stream_is_a_gap_for_any_real_cursor() -> None:
    missing = Exception("ERR no such key")
    assert history_from("c", (5, 0), missing, []).gap is True
    assert history_from("c", None, missing, []).gap is False
    assert history_from("c", (0, 0), missing, []).gap is False
    assert read_stream("c", (5, 0), missing, []).lost


# -- properties: nothing the HTTP API refuses comes out ---------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_types = st.one_of(
    st.none(),
    st.sampled_from(["t", "hub.gap", "a b", "a\u2028", "x" * 65, "ok.type:1-_"]),
    st.text(max_size=8),
)
_retries = st.one_of(
    st.none(), st.integers(min_value=-5, max_value=86_400_005), st.sampled_from(["12", "x", True, 1.5])
)
_ids = st.one_of(
    st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**65), st.integers(0, 2**65)),
    st.sampled_from(["0-0", "1-0", "x", "", "99999999999999-0", f"{NOW}-0", f"{NOW}-1"]),
    st.integers(),
)
_items = st.fixed_dictionaries(
    {},
    optional={
        "id": _ids,
        "kind": st.sampled_from(["json", "text", "xml", ""]),
        "data": st.one_of(st.text(max_size=40), _json.map(lambda v: json.dumps(v)), _json),
        "event": _types,
        "retry": _retries,
        "other": st.integers(),
    },
)
_messages = st.one_of(
    _json,
    st.fixed_dictionaries({"data": _json}, optional={"event": _types, "retry": _retries, "x": st.integers()}),
    st.fixed_dictionaries(
        {"hub": st.sampled_from([1, 2, True]), "events": st.one_of(st.lists(_items, max_size=4), _json)},
        optional={"more": st.integers()},
    ),
)


def _check_decoded(raw: bytes, limits: Limits) -> None:
    try:
        decoded = decode_message("c", raw, limits, now_ms=NOW)
    except Invalid:
        return
    if decoded.announced is not None:
        assert decoded.events == []
        assert decoded.announced[0] <= NOW + MAX_FUTURE_MS
        assert parse_id(f"{decoded.announced[0]}-{decoded.announced[1]}") == decoded.announced
    for event in decoded.events:
        assert event.key is None
        assert http_accepts(event.payload, limits), event.payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([Limits(), SMALL]))
def test_decoding_any_bytes_never_raises_and_yields_only_what_http_accepts(
    raw: bytes, limits: Limits
) -> None:
    _check_decoded(raw, limits)
    _check_decoded(ANNOUNCEMENT_PREFIX + raw, limits)


@settings(max_examples=400, deadline=None)
@given(_messages, st.sampled_from([Limits(), SMALL]))
def test_decoding_any_json_never_raises_and_yields_only_what_http_accepts(value: Any, limits: Limits) -> None:
    _check_decoded(json.dumps(value).encode(), limits)
    _check_decoded(json.dumps(value, separators=(",", ":")).encode(), limits)


_field_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"json", b"text", b"hub.gap", b"86400000", b"86400001", b"\xff", b""]),
    _json.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([b"k", b"d", b"e", b"r", b"x"]), _field_values, max_size=5),
    st.sampled_from([Limits(), SMALL]),
)
def test_any_stream_entry_is_an_event_http_accepts_or_invalid(
    fields: dict[bytes, bytes], limits: Limits
) -> None:
    try:
        event = event_from_entry("c", b"7-1", fields, limits)
    except Invalid:
        return
    assert event.key == (7, 1)
    assert http_accepts(event.payload, limits), event.payload


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["json", "text"]),
            st.text(min_size=1, max_size=30),
            st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.:-]{1,10}", fullmatch=True)),
            st.one_of(st.none(), st.integers(0, 86_400_000)),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 2**20),
)
def test_a_well_formed_announcement_yields_its_newest_id(
    events: list[tuple[str, str, str | None, int | None]], seq: int
) -> None:
    items = []
    for n, (kind, data, etype, retry) in enumerate(events):
        fields: dict[str, Any] = {}
        if etype is not None and not etype.startswith("hub."):
            fields["event"] = etype
        if retry is not None:
            fields["retry"] = retry
        items.append(item(id=f"{NOW}-{seq + n}", kind=kind, data=data, **fields))
    decoded = decode_message("c", announcement(*items), now_ms=NOW)
    assert decoded.announced == (NOW, seq + len(events) - 1)
    assert decoded.events == []
