from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.ids import IdClock, format_id, parse_id


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("0-0", (0, 0)),
        ("1700000000000-3", (1700000000000, 3)),
        ("18446744073709551615-18446744073709551615", (2**64 - 1, 2**64 - 1)),
    ],
)
def test_parse_id_accepts_stream_ids(text: str, key: tuple[int, int]) -> None:
    assert parse_id(text) == key
    assert format_id(key) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1-",
        "-1",
        "a-1",
        "1-2-3",
        " 1-2",
        "1-2 ",
        "18446744073709551616-0",
        "\uff11-\uff12",
        "1_2",
        "earliest",
    ],
)
def test_parse_id_rejects_malformed(text: str) -> None:
    assert parse_id(text) is None


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_format_parse_round_trip(ms: int, seq: int) -> None:
    assert parse_id(format_id((ms, seq))) == (ms, seq)


def test_clock_is_strictly_increasing_even_when_time_goes_back() -> None:
    clock = IdClock()
    keys = [clock.next(now) for now in [100, 100, 101, 99, 99, 150, 150]]
    assert keys == [(100, 0), (100, 1), (101, 0), (101, 1), (101, 2), (150, 0), (150, 1)]
    assert keys == sorted(set(keys))
