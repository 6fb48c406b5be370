"""Input validation: tables for the edges, properties for the rest."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import sse
from hub.core.event import Event
from hub.inputs import (
    EARLIEST,
    MAX_JSON_DEPTH,
    InputError,
    Limits,
    check_channel,
    parse_publish,
    pick_last_event_id,
    resumes_for,
    stream_channels,
)

LIMITS = Limits(max_event_bytes=1000, max_body_bytes=10_000, max_channels_per_stream=4)
NAME_CHARS = st.sampled_from("ABCXYZabcxyz0189_.:-")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    # beyond 64 bits too (orjson reads those as floats): they must stay exact
    | st.integers(2**64, 2**300)
    | st.integers(-(2**300), -(2**63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.text(NAME_CHARS, min_size=1, max_size=128).filter(lambda n: n not in (".", "..")))
def test_valid_channel_names_pass(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_segments_are_not_channel_names(name: str) -> None:
    # A browser or curl turns /channels/../events into /events: nobody could reach them.
    with pytest.raises(InputError) as info:
        check_channel(name)
    assert (info.value.status, info.value.error) == (400, "bad_channel")


@pytest.mark.parametrize("name", ["...", ".a", "a.", "a..b", "._."])
def test_other_names_with_dots_stay_valid(name: str) -> None:
    assert check_channel(name) == name


@given(st.text(min_size=0, max_size=140))
def test_channel_names_outside_the_alphabet_fail_with_400(name: str) -> None:
    ok = (
        1 <= len(name) <= 128
        and all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-" for c in name)
        and name not in (".", "..")
    )
    if ok:
        assert check_channel(name) == name
    else:
        with pytest.raises(InputError) as info:
            check_channel(name)
        assert info.value.status == 400


@given(json_values)
def test_any_json_data_survives_publish_encode_parse(value: Any) -> None:
    body = json.dumps({"data": value}).encode()
    (payload,), batch = parse_publish("application/json", body, {}, Limits(max_event_bytes=1 << 20))
    assert not batch
    event = Event("c", (1, 0), payload)
    (parsed,) = sse.SSEParser().feed(event.frame)
    # the stdlib reads integers of any size exactly (orjson would round big ones)
    assert json.loads(parsed.data) == value
    assert parsed.id == "1-0"


@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=300))
def test_any_text_survives_publish_encode_parse(text: str) -> None:
    (payload,), _ = parse_publish("text/plain; charset=utf-8", text.encode(), {}, LIMITS)
    (parsed,) = sse.SSEParser().feed(Event("c", (1, 0), payload).frame)
    assert parsed.data == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b'{"data": "' + b"x" * 999 + b'"}', 413),  # 1001 bytes with quotes
        ("application/json", b'{"data": "' + b"x" * 998 + b'"}', None),  # exactly 1000
        # sized in UTF-8 bytes on the wire, not characters: 2 x 500 + 2 quotes
        ("application/json", '{"data": "{}"}'.replace("{}", "\u00e9" * 500).encode(), 413),
        ("application/json", '{"data": "{}"}'.replace("{}", "\u00e9" * 499).encode(), None),
        ("application/json", b'[{"data": 1}, {"data": "' + "\u00e9".encode() * 500 + b'"}]', 413),
        ("text/plain", b"y" * 1001, 413),
        ("text/plain", b"y" * 1000, None),
        ("text/plain; charset=latin-1", b"y", 415),
        ("application/vnd.api+json", b'{"data": 1}', None),
        ("APPLICATION/JSON; charset=utf-8", b'{"data": 1}', None),
        ("application/json", b'{"data": 1e400}', 400),
        ("application/json", b'{"data": NaN}', 400),
        ("application/json", b'"just a string"', 400),
        ("application/json", b"[1, 2]", 400),
    ],
)
def test_publish_edges(content_type: str, body: bytes, status: int | None) -> None:
    if status is None:
        payloads, _ = parse_publish(content_type, body, {}, LIMITS)
        assert payloads
    else:
        with pytest.raises(InputError) as info:
            parse_publish(content_type, body, {}, LIMITS)
        assert info.value.status == status
        assert info.value.detail


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` levels of arrays and objects, alternating, around ``leaf``."""
    out = leaf
    for level in range(depth):
        out = b"[" + out + b"]" if level % 2 else b'{"k":' + out + b"}"
    return out


def data_of(body: bytes) -> list[Any]:
    payloads, _ = parse_publish("application/json", body, {}, Limits(max_event_bytes=1 << 20))
    return [json.loads(p.data) for p in payloads]


@pytest.mark.parametrize("depth", [0, 1, 2, MAX_JSON_DEPTH])
def test_data_nested_up_to_the_limit_is_kept(depth: int) -> None:
    body = b'{"data": ' + nested(depth) + b"}"
    assert data_of(body) == [json.loads(nested(depth))]
    assert data_of(b"[" + body + b"," + body + b"]") == [json.loads(nested(depth))] * 2


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 254, 255, 300, 1000, 1022])
@pytest.mark.parametrize("batch", [False, True])
def test_data_nested_beyond_the_limit_is_a_400(depth: int, batch: bool) -> None:
    # 255 to 1,022 levels: orjson reads them, cannot write them back (once a 500 with a traceback)
    body = b'{"data": ' + nested(depth) + b"}"
    if batch:
        body = b'[{"data": 1}, ' + body + b"]"
    with pytest.raises(InputError) as info:
        parse_publish("application/json", body, {}, LIMITS)
    assert (info.value.status, info.value.error) == (400, "bad_request")
    assert f"more than {MAX_JSON_DEPTH} levels" in info.value.detail
    assert info.value.detail.startswith("[1]" if batch else "body")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 500 + "{" * 500
    assert data_of(orjson.dumps({"data": {"s": text, "l": [[text]]}})) == [{"s": text, "l": [[text]]}]


def test_a_body_nested_beyond_what_orjson_reads_is_a_400() -> None:
    with pytest.raises(InputError) as info:
        parse_publish("application/json", b'{"data": ' + nested(1100) + b"}", {}, LIMITS)
    assert (info.value.status, info.value.error) == (400, "bad_request")


@pytest.mark.parametrize(
    "number",
    [
        "9007199254740993",  # 2**53 + 1: not a double, still exact
        "9223372036854775807",
        "-9223372036854775808",
        "-9223372036854775809",  # below int64
        "18446744073709551615",
        "18446744073709551616",  # above uint64
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "1" + "0" * 300,
    ],
)
def test_integers_of_any_size_are_republished_exactly(number: str) -> None:
    body = b'{"data": {"n": ' + number.encode() + b', "l": [' + number.encode() + b", 1.5]}}"
    (payload,), _ = parse_publish("application/json", body, {}, LIMITS)
    assert payload.data == '{"n":' + number + ',"l":[' + number + ",1.5]}"
    # in a batch too, next to an event without any
    payloads, _ = parse_publish("application/json", b'[{"data": 2}, ' + body + b"]", {}, LIMITS)
    assert [p.data for p in payloads] == ["2", payload.data]


def test_long_digit_runs_in_strings_and_fractions_keep_their_meaning() -> None:
    value = {"s": "12345678901234567890123", "f": 0.12345678901234567890123, "e": 1.5e300}
    body = b'{"data": {"s": "12345678901234567890123", "f": 0.12345678901234567890123, "e": 1.5e300}}'
    assert data_of(body) == [value]


def test_an_event_is_sized_by_its_exact_data() -> None:
    # 30 digits, where orjson's float text "1.2345678901234568e+29" has 22
    number = b"123456789012345678901234567890"
    limits = Limits(max_event_bytes=25)
    with pytest.raises(InputError) as info:
        parse_publish("application/json", b'{"data": ' + number + b"}", {}, limits)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "number", [b"1e400", b"-1e400", b"1" + b"0" * 400, b"NaN", b"Infinity", b"-Infinity", b"1e99999"]
)
def test_numbers_beyond_a_double_are_a_400(number: bytes) -> None:
    with pytest.raises(InputError) as info:
        parse_publish("application/json", b'{"data": [' + number + b"]}", {}, LIMITS)
    assert (info.value.status, info.value.error) == (400, "bad_request")


@pytest.mark.parametrize(
    ("number", "value"),
    [(b"1E2", 100.0), (b"1e-400", 0.0), (b"-0", 0), (b"-0.0", -0.0), (b"0.1000000000000000000001", 0.1)],
)
def test_other_numbers_are_republished_as_the_double_they_denote(number: bytes, value: float) -> None:
    assert data_of(b'{"data": ' + number + b"}") == [value]


def test_of_duplicate_keys_the_last_wins_as_in_json_parse() -> None:
    assert data_of(b'{"data": {"a": 1, "b": 2, "a": 3}}') == [{"a": 3, "b": 2}]
    assert data_of(b'{"data": 1, "data": 2}') == [2]


def test_text_event_type_and_retry_come_from_the_query() -> None:
    (payload,), _ = parse_publish("text/plain", b"hi", {"event": "log", "retry": "250"}, LIMITS)
    assert (payload.kind, payload.data, payload.event, payload.retry) == ("text", "hi", "log", 250)


def test_stream_channels_are_deduplicated_in_order_and_capped() -> None:
    assert stream_channels(["b", "a", "b"], LIMITS) == ["b", "a"]
    with pytest.raises(InputError):
        stream_channels(["a", "b", "c", "d", "e"], LIMITS)
    with pytest.raises(InputError):
        stream_channels([], LIMITS)


def test_header_wins_over_query_and_empty_means_live() -> None:
    assert pick_last_event_id("5-0", "1-0") == "5-0"
    assert pick_last_event_id(None, "1-0") == "1-0"
    assert pick_last_event_id("", "") == ""
    assert resumes_for("", 2, True) == [None, None]
    assert [r.after if r else "live" for r in resumes_for(EARLIEST, 2, True)] == [None, None]
    with pytest.raises(InputError):
        pick_last_event_id("1" * 2049, None)
