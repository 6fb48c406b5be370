"""Tests for hub.sse: SSE encoding and the WHATWG event-stream parser."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.sse import (
    SSEEvent,
    SSEParser,
    encode_comment,
    encode_data_lines,
    encode_event,
    encode_retry,
    split_lines,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)

# Any Unicode text except lone surrogates (which cannot be UTF-8 encoded).
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
TEXT = st.text(alphabet=st.characters(exclude_categories=SURROGATES))
# Text biased towards the characters that matter to the wire format.
SPICY_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\0", " ", ":", "\ufeff", "\u2028", "\x85", "\v", "\f", "😀"]),
        TEXT,
    ),
    max_size=12,
).map("".join)
ID_TEXT = TEXT.filter(lambda s: not any(c in s for c in "\r\n\0"))
EVENT_TEXT = TEXT.filter(lambda s: "\r" not in s and "\n" not in s)


def parse_all(payload: bytes) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events = parser.feed(payload)
    parser.finish()
    return events, parser


def parse_chunks(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    parser.finish()
    return events, parser


def split_at(payload: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


def draw_chunks(data: st.DataObject, payload: bytes) -> list[bytes]:
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(payload)), max_size=20), label="cuts")
    return split_at(payload, cuts)


def normalise_newlines(text: str) -> str:
    return "\n".join(split_lines(text))


# --------------------------------------------------------------------------- split_lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [""]),
        ("a", ["a"]),
        ("a\n", ["a", ""]),
        ("a\r\nb\rc\nd", ["a", "b", "c", "d"]),
        ("\r\n", ["", ""]),
        ("\n\r", ["", "", ""]),  # LF then a lone CR: two terminators
        ("\r\r\n", ["", "", ""]),
        ("a\u2028b\x85c\vd\fe\x1cf\x1dg\x1eh", ["a\u2028b\x85c\vd\fe\x1cf\x1dg\x1eh"]),
    ],
)
def test_split_lines(text: str, expected: list[str]) -> None:
    assert split_lines(text) == expected


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    ("data", "kwargs", "expected"),
    [
        ("hello", {}, b"data: hello\n\n"),
        ("", {}, b"data: \n\n"),
        ("a\n", {}, b"data: a\ndata: \n\n"),
        ("a\nb\nc", {}, b"data: a\ndata: b\ndata: c\n\n"),
        ("a\r\nb", {}, b"data: a\ndata: b\n\n"),
        ("a\rb", {}, b"data: a\ndata: b\n\n"),
        ("a\r\r\nb", {}, b"data: a\ndata: \ndata: b\n\n"),
        ("\n", {}, b"data: \ndata: \n\n"),
        (" lead", {}, b"data:  lead\n\n"),
        ("a\0b", {}, b"data: a\x00b\n\n"),
        ("😀 é", {}, "data: 😀 é\n\n".encode()),
        ("a\u2028b", {}, "data: a\u2028b\n\n".encode()),
        ("x", {"event": "update"}, b"event: update\ndata: x\n\n"),
        ("x", {"id": "42"}, b"id: 42\ndata: x\n\n"),
        ("x", {"id": ""}, b"id: \ndata: x\n\n"),
        ("x", {"retry": 0}, b"retry: 0\ndata: x\n\n"),
        ("x", {"retry": 3000}, b"retry: 3000\ndata: x\n\n"),
        (
            '{"a":1}\n{"b":2}',
            {"id": "7-0", "event": "tick", "retry": 1500},
            b'id: 7-0\nevent: tick\nretry: 1500\ndata: {"a":1}\ndata: {"b":2}\n\n',
        ),
        ("x", {"id": " sp", "event": " sp"}, b"id:  sp\nevent:  sp\ndata: x\n\n"),
        ("x", {"event": "with\0nul"}, b"event: with\x00nul\ndata: x\n\n"),
    ],
)
def test_encode_event_bytes(data: str, kwargs: dict[str, Any], expected: bytes) -> None:
    assert encode_event(data, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": "a\nb"},
        {"id": "a\rb"},
        {"id": "a\r\nb"},
        {"id": "a\0b"},
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"retry": -1},
    ],
)
def test_encode_event_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"id|event|retry"):
        encode_event("x", **kwargs)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("", b"data: \n"),
        ("x", b"data: x\n"),
        ("a\n", b"data: a\ndata: \n"),
        ("a\r\nb\rc\nd", b"data: a\ndata: b\ndata: c\ndata: d\n"),
        ("  two", b"data:   two\n"),
        ("é😀", "data: é😀\n".encode()),
    ],
)
def test_encode_data_lines(data: str, expected: bytes) -> None:
    assert encode_data_lines(data) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b":\n"),
        ("ping", b": ping\n"),
        (" lead", b":  lead\n"),
        ("a\nb", b": a\n: b\n"),
        ("a\r\nb\rc", b": a\n: b\n: c\n"),
        ("a\n", b": a\n: \n"),
        ("😀", ": 😀\n".encode()),
    ],
)
def test_encode_comment(text: str, expected: bytes) -> None:
    assert encode_comment(text) == expected


def test_encode_comment_default_and_no_blank_line() -> None:
    assert encode_comment() == b":\n"
    for text in ["", "x", "a\n", "a\nb", "\n\n"]:
        assert b"\n\n" not in encode_comment(text)


@pytest.mark.parametrize(
    ("ms", "expected"), [(0, b"retry: 0\n"), (1, b"retry: 1\n"), (30000, b"retry: 30000\n")]
)
def test_encode_retry(ms: int, expected: bytes) -> None:
    assert encode_retry(ms) == expected


def test_encode_retry_negative() -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_retry(-5)


def test_encoded_comment_and_retry_parse_without_events() -> None:
    parser = SSEParser()
    assert parser.feed(encode_comment("hb") + encode_retry(2500) + encode_comment()) == []
    assert parser.comments == ["hb", ""]
    assert parser.retry == 2500
    assert parser.feed(encode_data_lines("a\nb") + b"\n") == [SSEEvent(data="a\nb", retry=2500)]


# --------------------------------------------------------------------------- parser: spec tables


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # Spec: "data: YHOO / data: +2 / data: 10" -> one event, lines joined by LF.
        (b"data: YHOO\ndata: +2\ndata: 10\n\n", [SSEEvent(data="YHOO\n+2\n10")]),
        # Spec: the space after the colon is optional; both fire "test".
        (b"data:test\n\ndata: test\n\n", [SSEEvent(data="test"), SSEEvent(data="test")]),
        # Spec: "data" alone -> "", "data\ndata" -> "\n", final unterminated block discarded.
        (b"data\n\ndata\ndata\n\ndata:", [SSEEvent(data=""), SSEEvent(data="\n")]),
        # Field named "test" is ignored; empty data fields fire empty events.
        (b"test\n\ndata\n\ndata:\n\ndata:\n\n", [SSEEvent(data="")] * 3),
        (b"data:  two spaces\n\n", [SSEEvent(data=" two spaces")]),
        (b"data:\tx\n\n", [SSEEvent(data="\tx")]),
        (b"data: a:b: c\n\n", [SSEEvent(data="a:b: c")]),
        (b"data: x\r\n\r\n", [SSEEvent(data="x")]),
        (b"data: x\r\rdata: y\n\n", [SSEEvent(data="x"), SSEEvent(data="y")]),
        (b"data: a\r\ndata: b\rdata: c\n\r\n", [SSEEvent(data="a\nb\nc")]),
        (b"data: a\n\r\n\rdata: b\r\r", [SSEEvent(data="a"), SSEEvent(data="b")]),
        (b"event: add\ndata: 1\n\ndata: 2\n\n", [SSEEvent(type="add", data="1"), SSEEvent(data="2")]),
        (b"event: add\n\ndata: 2\n\n", [SSEEvent(data="2")]),  # type reset even when nothing fired
        (b"event\ndata: x\n\n", [SSEEvent(data="x")]),  # empty event type -> "message"
        (b"event: a\nevent: b\ndata: x\n\n", [SSEEvent(type="b", data="x")]),
        (b"Data: x\nDATA: y\n\n", []),  # field names are case-sensitive
        (b"data : x\n\n", []),  # "data " is not "data"
        (b" data: x\n\n", []),
        (b"foo: bar\ndata: x\n\n", [SSEEvent(data="x")]),
        (b"data: a\0b\n\n", [SSEEvent(data="a\0b")]),
        (b"data: \xf0\x9f\x98\x80\n\n", [SSEEvent(data="😀")]),
        (b"data: \xff\xfe\n\n", [SSEEvent(data="\ufffd\ufffd")]),  # invalid UTF-8 replaced
        (b"data: a\xe2\x80\xa8b\xc2\x85c\x0bd\x0ce\n\n", [SSEEvent(data="a\u2028b\x85c\vd\fe")]),
        (b"data: unterminated block\n", []),
        (b"data: unterminated line", []),
        (b"", []),
        (b"\n\n\n", []),
    ],
)
def test_parser_stream_table(stream: bytes, expected: list[SSEEvent]) -> None:
    events, _ = parse_all(stream)
    assert events == expected
    # Same result byte by byte (exercises every split point, including CR|LF).
    events_bytewise, _ = parse_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert events_bytewise == expected


def test_spec_example_ids_and_comments() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    events, parser = parse_all(stream)
    assert events == [
        SSEEvent(data="first event", id="1"),
        SSEEvent(data="second event", id=""),
        SSEEvent(data=" third event", id=""),
    ]
    assert parser.comments == ["test stream"]
    assert parser.last_event_id == ""


def test_spec_example_last_block_needs_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: first\n\ndata: last") == [SSEEvent(data="first")]
    assert parser.feed(b"\n") == []
    parser.finish()
    assert parser.feed(b"\n") == []  # the discarded block does not come back


@pytest.mark.parametrize(
    ("stream", "expected_types", "expected_data"),
    [
        (b"\xef\xbb\xbfdata: x\n\n", ["message"], ["x"]),
        # Only the first BOM is stripped; the second one is part of the field name.
        (b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [], []),
        (b"\xef\xbb\xbf\xef\xbb\xbf\n\xef\xbb\xbfdata: x\n\n", [], []),
        # A BOM that is not at the start of the stream is never stripped.
        (b"data: a\n\n\xef\xbb\xbfdata: b\n\n", ["message"], ["a"]),
        (b"data: \xef\xbb\xbfx\n\n", ["message"], ["\ufeffx"]),
        (b"\xef\xbb\xbf: c\nevent: e\ndata: y\n\n", ["e"], ["y"]),
    ],
)
def test_parser_bom(stream: bytes, expected_types: list[str], expected_data: list[str]) -> None:
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        events, _ = parse_chunks(chunks)
        assert [e.type for e in events] == expected_types
        assert [e.data for e in events] == expected_data


def test_parser_bom_stripped_only_at_start_after_split_bytes() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef") == []
    assert parser.feed(b"\xbb") == []
    assert parser.feed(b"\xbfda") == []
    assert parser.feed(b"ta: ok\n\n") == [SSEEvent(data="ok")]
    assert parser.feed(b"\xef\xbb\xbfdata: no\n\n") == []


def test_parser_comments_collected() -> None:
    events, parser = parse_all(b":\n: ping\n:  two\n::x\n:no space\ndata: x\n: inside\n\n")
    assert events == [SSEEvent(data="x")]
    assert parser.comments == ["", "ping", " two", ":x", "no space", "inside"]


def test_parser_comment_only_block_fires_nothing() -> None:
    events, parser = parse_all(b": hb\n\n: hb\n\n")
    assert events == []
    assert parser.comments == ["hb", "hb"]


@pytest.mark.parametrize(
    ("stream", "expected_ids", "final_id"),
    [
        (b"id: 1\ndata: a\n\n", ["1"], "1"),
        (b"id: 1\ndata: a\n\ndata: b\n\n", ["1", "1"], "1"),  # the id persists
        (b"id: 1\ndata: a\n\nid\ndata: b\n\n", ["1", ""], ""),  # "id" alone resets it
        (b"id: 1\ndata: a\n\nid:\ndata: b\n\n", ["1", ""], ""),
        (b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n", ["1", "1"], "1"),  # NUL: field ignored
        (b"id: \0\ndata: b\n\n", [""], ""),
        (b"id: a\nid: b\ndata: x\n\n", ["b"], "b"),
        (b"id:  spaced\ndata: x\n\n", [" spaced"], " spaced"),
        (b"id: 1\n\n", [], "1"),  # no data: nothing fired, but last_event_id updated
        (b"id: 1\nevent: e\n\ndata: x\n\n", ["1"], "1"),
        (b"data: x\nid: 5\n\n", ["5"], "5"),  # id applies to the block it is in
        (b"id: 9\ndata: x", [], ""),  # unterminated block: never dispatched
    ],
)
def test_parser_ids(stream: bytes, expected_ids: list[str], final_id: str) -> None:
    events, parser = parse_all(stream)
    assert [e.id for e in events] == expected_ids
    assert parser.last_event_id == final_id


def test_last_event_id_updated_before_data_check() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 3\nevent: ignored\n\n") == []
    assert parser.last_event_id == "3"
    # The type buffer was reset by the empty dispatch, the id buffer was not.
    assert parser.feed(b"data: z\n\n") == [SSEEvent(type="message", data="z", id="3")]


def test_id_is_only_committed_at_dispatch() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert parser.last_event_id == "1"
    parser.finish()  # the block carrying id 2 is discarded with its id
    assert parser.last_event_id == "1"
    assert parser.feed(b"data: c\n\n") == [SSEEvent(data="c", id="1")]


@pytest.mark.parametrize(
    ("stream", "expected_retry"),
    [
        (b"retry: 1000\n", 1000),
        (b"retry:1000\n", 1000),
        (b"retry: 0\n", 0),
        (b"retry: 007\n", 7),
        (b"retry: 1a\n", None),
        (b"retry: -1\n", None),
        (b"retry: +1\n", None),
        (b"retry: 1.5\n", None),
        (b"retry: \n", None),
        (b"retry\n", None),
        (b"retry:  10\n", None),  # only one space is stripped; " 10" is not all digits
        (b"retry: 10 \n", None),
        ("retry: \u0661\u0662\n".encode(), None),  # Arabic-Indic digits are not ASCII digits
        ("retry: \u00b2\n".encode(), None),  # superscript two
        ("retry: \uff11\uff12\n".encode(), None),  # fullwidth digits
        (b"retry: 100\nretry: x\n", 100),  # an invalid value leaves the previous one
        (b"retry: 100\nretry: 200\n", 200),
    ],
)
def test_parser_retry(stream: bytes, expected_retry: int | None) -> None:
    parser = SSEParser()
    assert parser.feed(stream) == []
    assert parser.retry == expected_retry


def test_parser_retry_huge_value() -> None:
    parser = SSEParser()
    parser.feed(b"retry: " + b"0" * 5000 + b"42\n")
    assert parser.retry == 42
    parser.feed(b"retry: " + b"9" * 50 + b"\n")
    assert parser.retry == int("9" * 50)
    # Beyond Python's int-string digit limit: ignored (like an overflow in browsers), no exception.
    parser.feed(b"retry: " + b"9" * 10000 + b"\n")
    assert parser.retry == int("9" * 50)
    assert parser.feed(b"data: still alive\n\n")[0].data == "still alive"


def test_parser_retry_attached_to_its_block_only() -> None:
    parser = SSEParser()
    events = parser.feed(b"retry: 500\ndata: a\n\ndata: b\n\nretry: 700\n\ndata: c\n\nretry: 9\ndata: d\n\n")
    assert [(e.data, e.retry) for e in events] == [("a", 500), ("b", None), ("c", None), ("d", 9)]
    assert parser.retry == 9


def test_parser_retry_invalid_in_block_does_not_mark_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 100\n\nretry: nope\ndata: a\n\n") == [SSEEvent(data="a", retry=None)]
    assert parser.retry == 100


def test_parser_type_reset_after_dispatch() -> None:
    events, _ = parse_all(b"event: one\ndata: 1\n\ndata: 2\n\nevent: three\ndata: 3\n\n")
    assert [(e.type, e.data) for e in events] == [("one", "1"), ("message", "2"), ("three", "3")]


def test_finish_discards_unterminated_block() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: e\ndata: 1\n\nevent: x\ndata: pending\ndata: more\n") == [
        SSEEvent(type="e", data="1")
    ]
    parser.finish()
    # A new stream (reconnection) starts from clean buffers: no leftover data or type.
    assert parser.feed(b"data: fresh\n\n") == [SSEEvent(data="fresh")]


def test_finish_discards_partial_line_and_partial_utf8() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: \xf0\x9f") == [SSEEvent(data="a")]
    parser.finish()
    # The truncated sequence was flushed: a new stream starts decoding afresh, so
    # the rest of the emoji is two stray continuation bytes, not a completed "😀".
    assert parser.feed(b"\x98\x80\n\ndata: b\n\n") == [SSEEvent(data="b")]
    parser2 = SSEParser()
    parser2.feed(b"data: half")
    parser2.finish()
    assert parser2.feed(b" line\n\n") == []  # " line" is a field named " line", not data


def test_finish_allows_bom_on_next_stream() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb\xbfdata: 1\n\n") == [SSEEvent(data="1")]
    parser.finish()
    assert parser.feed(b"\xef\xbb\xbfdata: 2\n\n") == [SSEEvent(data="2")]


# --------------------------------------------------------------------------- parser: chunking


def test_cr_split_across_chunks_is_one_line_ending() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # If CR|LF counted twice, this LF would be an empty line and dispatch "a" early.
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent(data="a\nb")]
    assert parser.feed(b"\n") == []  # pairs with the preceding CR: no extra blank line


def test_lone_cr_dispatches_without_waiting_for_next_chunk() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [SSEEvent(data="a")]
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\r") == [SSEEvent(data="b")]


def test_cr_then_empty_chunk_then_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []  # an empty chunk does not forget the pending CR
    assert parser.feed(b"\ndata: b\n") == []
    assert parser.feed(b"\n") == [SSEEvent(data="a\nb")]


def test_cr_then_incomplete_utf8_then_text() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\xe2") == []  # incomplete UTF-8: decodes to nothing yet
    assert parser.feed(b"\x82\xac: c\n\n") == [SSEEvent(data="a")]  # "€" starts a new line
    assert parser.comments == []


def test_utf8_split_across_chunks() -> None:
    payload = "data: é😀€\n\n".encode()
    for i in range(len(payload) + 1):
        events, _ = parse_chunks([payload[:i], payload[i:]])
        assert events == [SSEEvent(data="é😀€")]


def test_long_line_in_many_chunks() -> None:
    body = "x" * 200_000
    payload = encode_event(body, id="big")
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(payload), 7):
        events.extend(parser.feed(payload[i : i + 7]))
    assert events == [SSEEvent(data=body, id="big")]


def test_many_events_stream() -> None:
    payload = b"".join(encode_event(str(i), id=str(i)) for i in range(5000))
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(payload), 4096):
        events.extend(parser.feed(payload[i : i + 4096]))
    assert [e.data for e in events] == [str(i) for i in range(5000)]
    assert parser.last_event_id == "4999"


def test_mixed_line_endings() -> None:
    stream = b"id: 1\r\nevent: a\rdata: x\ndata: y\r\n\rid: 2\ndata: z\r\r\n"
    events, _ = parse_all(stream)
    assert events == [SSEEvent(type="a", data="x\ny", id="1"), SSEEvent(data="z", id="2")]


def test_sse_event_defaults_and_frozen() -> None:
    event = SSEEvent()
    assert (event.type, event.data, event.id, event.retry) == ("message", "", "", None)
    with pytest.raises(AttributeError):
        event.data = "changed"  # type: ignore[misc]


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(
    text=st.one_of(TEXT, SPICY_TEXT),
    event_id=st.none() | ID_TEXT,
    event_type=st.none() | EVENT_TEXT,
    retry=st.none() | st.integers(min_value=0, max_value=2**40),
    data=st.data(),
)
def test_property_event_round_trip(
    text: str,
    event_id: str | None,
    event_type: str | None,
    retry: int | None,
    data: st.DataObject,
) -> None:
    payload = encode_event(text, id=event_id, event=event_type, retry=retry)
    events, parser = parse_chunks(draw_chunks(data, payload))
    expected = SSEEvent(
        type=event_type or "message",
        data=text.replace("\r\n", "\n").replace("\r", "\n"),
        id=event_id or "",
        retry=retry,
    )
    assert events == [expected]
    assert parser.last_event_id == (event_id or "")
    assert parser.retry == retry


@PROPERTY_SETTINGS
@given(text=SPICY_TEXT)
def test_property_split_lines(text: str) -> None:
    lines = split_lines(text)
    assert len(lines) == text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert "\n".join(lines) == text.replace("\r\n", "\n").replace("\r", "\n")


@PROPERTY_SETTINGS
@given(text=SPICY_TEXT, data=st.data())
def test_property_comment_round_trip(text: str, data: st.DataObject) -> None:
    payload = encode_comment(text)
    events, parser = parse_chunks(draw_chunks(data, payload))
    assert events == []
    assert parser.comments == split_lines(text)


@pytest.mark.parametrize("char", ["x", "é", "😀", "\0", " ", ":"])
def test_very_long_line_round_trip(char: str) -> None:
    text = char * 100_000
    payload = encode_event(text + "\r\n" + text + "\r" + text, id="long", event="big")
    expected = SSEEvent(type="big", data="\n".join([text] * 3), id="long")
    assert parse_all(payload)[0] == [expected]
    chunks = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    assert parse_chunks(chunks)[0] == [expected]


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=20,
)


@PROPERTY_SETTINGS
@given(value=JSON_VALUES, event_id=st.none() | ID_TEXT, data=st.data())
def test_property_json_round_trip(value: Any, event_id: str | None, data: st.DataObject) -> None:
    payload = encode_event(orjson.dumps(value).decode(), id=event_id, event="json")
    events, _ = parse_chunks(draw_chunks(data, payload))
    assert len(events) == 1
    assert events[0].type == "json"
    assert events[0].id == (event_id or "")
    assert orjson.loads(events[0].data) == value


EVENT_SPECS = st.tuples(
    st.one_of(TEXT, SPICY_TEXT),
    st.none() | ID_TEXT,
    st.none() | EVENT_TEXT,
    st.none() | st.integers(min_value=0, max_value=10**6),
)


@PROPERTY_SETTINGS
@given(
    specs=st.lists(EVENT_SPECS, min_size=1, max_size=8),
    comments=st.lists(st.none() | SPICY_TEXT, min_size=8, max_size=8),
    data=st.data(),
)
def test_property_concatenated_events(
    specs: list[tuple[str, str | None, str | None, int | None]],
    comments: list[str | None],
    data: st.DataObject,
) -> None:
    parts: list[bytes] = []
    expected: list[SSEEvent] = []
    last_id = ""
    for (text, event_id, event_type, retry), comment in zip(specs, comments, strict=False):
        if comment is not None:
            parts.append(encode_comment(comment))  # interleaved heartbeats must not change events
        parts.append(encode_event(text, id=event_id, event=event_type, retry=retry))
        if event_id is not None:
            last_id = event_id
        expected.append(SSEEvent(event_type or "message", normalise_newlines(text), last_id, retry))
    payload = b"".join(parts)

    whole, whole_parser = parse_all(payload)
    assert whole == expected
    chunked, chunked_parser = parse_chunks(draw_chunks(data, payload))
    assert chunked == expected
    bytewise, _ = parse_chunks([payload[i : i + 1] for i in range(len(payload))])
    assert bytewise == expected
    assert whole_parser.last_event_id == chunked_parser.last_event_id == last_id
    assert whole_parser.comments == chunked_parser.comments


@PROPERTY_SETTINGS
@given(payload=st.binary(max_size=300), data=st.data())
def test_property_arbitrary_bytes_chunking_invariant(payload: bytes, data: st.DataObject) -> None:
    # Whatever the bytes, how they are chunked must not change the outcome.
    whole, whole_parser = parse_all(payload)
    chunked, chunked_parser = parse_chunks(draw_chunks(data, payload))
    assert chunked == whole
    assert chunked_parser.comments == whole_parser.comments
    assert chunked_parser.last_event_id == whole_parser.last_event_id
    assert chunked_parser.retry == whole_parser.retry
