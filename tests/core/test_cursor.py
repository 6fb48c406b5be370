from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.cursor import decode_cursor, encode_cursor
from hub.core.ids import ZERO

# Bytes a browser may send in Last-Event-ID without a CORS preflight: none of
# these (Fetch: CORS-unsafe request-header byte) and no colon.
UNSAFE = re.compile(r'[\x00-\x08\x0a-\x1f"():<>?@\[\\\]{}\x7f]')

keys = st.one_of(st.just(ZERO), st.tuples(st.integers(1, 2**48), st.integers(0, 2**20)))


@given(st.lists(keys, min_size=1, max_size=32))
def test_cursor_round_trips(positions: list[tuple[int, int]]) -> None:
    text = encode_cursor(positions)
    assert decode_cursor(text, len(positions)) == positions
    assert not UNSAFE.search(text)


def test_cursor_for_a_few_channels_is_short() -> None:
    now = 1_795_000_000_000
    positions = [(now + 17, 3), (now, 0), ZERO, (now + 86_400_000, 12)]
    text = encode_cursor(positions)
    assert len(text) < 40
    assert len(encode_cursor([(now + i * 1000, i) for i in range(8)])) <= 128


@pytest.mark.parametrize(
    ("text", "channels"),
    [
        ("", 1),
        ("abc", 1),  # no entries
        ("abc_1_2", 1),  # too many entries
        ("abc_1", 2),  # too few
        ("ABC_1", 1),  # upper case is not ours
        ("a!c_1", 1),
        ("abc_1-", 1),
        ("abc_-1", 1),
        ("1795000000000-0", 1),  # a single-channel id
        ("abc_1:2", 1),
    ],
)
def test_cursor_that_does_not_fit_is_malformed(text: str, channels: int) -> None:
    assert decode_cursor(text, channels) is None
