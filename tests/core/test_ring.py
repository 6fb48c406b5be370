from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.ids import ZERO
from hub.core.ring import ReplayRing
from tests.core.helpers import event


def filled(capacity: int, count: int) -> ReplayRing:
    ring = ReplayRing(capacity)
    ring.extend(event("c", (1000, i)) for i in range(count))
    return ring


def test_after_returns_only_newer_events_in_order() -> None:
    ring = filled(10, 5)
    assert [e.key for e in ring.after((1000, 2))] == [(1000, 3), (1000, 4)]
    assert ring.after((1000, 4)) == []
    assert len(ring.after(ZERO)) == 5


def test_ring_keeps_the_newest_capacity_events_and_remembers_the_dropped_id() -> None:
    ring = filled(3, 10)
    assert len(ring) == 3
    assert [e.key for e in ring.after(ZERO)] == [(1000, 7), (1000, 8), (1000, 9)]
    assert ring.dropped == (1000, 6)


def test_since_reports_a_gap_only_when_events_after_the_cursor_were_dropped() -> None:
    ring = filled(3, 10)
    exact = ring.since((1000, 6))  # 7, 8, 9 all kept: nothing lost
    assert not exact.gap
    assert [e.key for e in exact.events] == [(1000, 7), (1000, 8), (1000, 9)]
    lost = ring.since((1000, 5))  # 6 was dropped
    assert lost.gap
    assert lost.oldest == "1000-7"
    assert [e.key for e in lost.events] == [(1000, 7), (1000, 8), (1000, 9)]
    assert lost.last == (1000, 9)


def test_since_none_replays_everything_kept_without_gap() -> None:
    ring = filled(3, 10)
    history = ring.since(None)
    assert not history.gap
    assert len(history.events) == 3


def test_cursor_newer_than_anything_is_live_only() -> None:
    ring = filled(3, 2)
    history = ring.since((9999, 0))
    assert history.events == []
    assert not history.gap
    assert history.last == (1000, 1)


def test_append_refuses_ids_that_do_not_increase() -> None:
    ring = filled(3, 2)
    with pytest.raises(ValueError, match="not newer"):
        ring.append(event("c", (1000, 1)))


@given(st.integers(1, 20), st.integers(0, 100), st.integers(-1, 101))
def test_ring_matches_a_plain_list_model(capacity: int, count: int, cursor: int) -> None:
    ring = filled(capacity, count)
    model = list(range(count))[-capacity:] if count else []
    history = ring.since((1000, cursor))
    # The model: events after the cursor that are gone from the ring.
    lost = [i for i in range(count) if i > cursor and i not in model]
    assert history.gap == bool(lost)
    want = model if lost else [i for i in model if i > cursor]
    assert [e.key[1] for e in history.events if e.key] == want


def test_a_page_of_history_says_where_the_next_starts() -> None:
    ring = ReplayRing(100)
    ring.extend(event("c", (i, 0)) for i in range(1, 11))
    first = ring.since(None, limit=4)
    assert [e.key for e in first.events] == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert first.more == (4, 0)
    rest = ring.since(first.more, limit=6)
    assert [e.key for e in rest.events] == [(i, 0) for i in range(5, 11)]
    assert rest.more is None  # exactly the rest: no further page
    assert ring.since((2, 0)).more is None  # no limit, one page
