"""Input validation: tables for the edges, properties for the rest."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import sse
from hub.core.event import Event
from hub.inputs import (
    EARLIEST,
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
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.text(NAME_CHARS, min_size=1, max_size=128))
def test_valid_channel_names_pass(name: str) -> None:
    assert check_channel(name) == name


@given(st.text(min_size=0, max_size=140))
def test_channel_names_outside_the_alphabet_fail_with_400(name: str) -> None:
    ok = 1 <= len(name) <= 128 and all(
        c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-" for c in name
    )
    if ok:
        assert check_channel(name) == name
    else:
        with pytest.raises(InputError) as info:
            check_channel(name)
        assert info.value.status == 400


@given(json_values)
def test_any_json_data_survives_publish_encode_parse(value: Any) -> None:
    body = orjson.dumps({"data": value})
    (payload,), batch = parse_publish("application/json", body, {}, Limits(max_event_bytes=1 << 20))
    assert not batch
    event = Event("c", (1, 0), payload)
    (parsed,) = sse.SSEParser().feed(event.frame)
    assert orjson.loads(parsed.data) == value
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
        assert info.value.body()["detail"]


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
