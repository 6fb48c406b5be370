"""An event's frame is exactly what the wire format's encoder makes, on its fast path too."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hub import sse
from hub.core.event import Event, Payload

_data = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
_keys = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@given(
    kind=st.sampled_from(["json", "text"]),
    data=_data,
    event=st.none() | st.from_regex(r"[A-Za-z0-9_.:-]{1,10}", fullmatch=True),
    retry=st.none() | st.integers(0, 86_400_000),
    key=st.none() | _keys,
)
def test_the_frame_is_the_encoders(
    kind: str, data: str, event: str | None, retry: int | None, key: tuple[int, int] | None
) -> None:
    frame = Event("c", key, Payload(kind, data, event, retry)).frame  # type: ignore[arg-type]
    expected_id = f"{key[0]}-{key[1]}" if key is not None else None
    assert frame == sse.encode_event(data, id=expected_id, event=event, retry=retry)
