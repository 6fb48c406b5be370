"""One timer ends streams at their deadlines; streams that end first leave no trace."""

from __future__ import annotations

import pytest

from hub.core.deadlines import COMPACT_FROM, Deadlines
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_items_end_in_deadline_order_with_their_final_bytes() -> None:
    clock = Clock()
    ended: list[tuple[str, bytes]] = []
    deadlines: Deadlines[str] = Deadlines(lambda item, final: ended.append((item, final)), clock)
    deadlines.add("late", clock.now + 0.2, b"L")
    deadlines.add("early", clock.now + 0.05, b"E")
    deadlines.add("past", clock.now - 5, b"P")
    clock.now += 0.1
    await until(lambda: len(ended) == 2, 2.0)
    assert ended == [("past", b"P"), ("early", b"E")]
    clock.now += 0.2
    await until(lambda: len(ended) == 3, 2.0)
    assert ended[2] == ("late", b"L")
    assert len(deadlines) == 0


async def test_a_discarded_item_never_ends_and_the_heap_stays_bounded() -> None:
    clock = Clock()
    ended: list[int] = []
    deadlines: Deadlines[int] = Deadlines(lambda item, _: ended.append(item), clock)
    # Streams that come and go long before their tokens expire (reconnect churn).
    for i in range(10 * COMPACT_FROM):
        deadlines.add(i, clock.now + 3600, b"")
        deadlines.discard(i)
        assert len(deadlines._heap) <= max(COMPACT_FROM + 1, 2 * len(deadlines) + 1)
    deadlines.add(-1, clock.now + 0.01, b"")
    clock.now += 1
    await until(lambda: ended == [-1], 2.0)
    deadlines.cancel()


async def test_cancel_disarms_the_one_timer_and_a_later_add_rearms_it() -> None:
    clock = Clock()
    ended: list[int] = []
    deadlines: Deadlines[int] = Deadlines(lambda item, _: ended.append(item), clock)
    deadlines.add(1, clock.now + 3600, b"")
    deadlines.add(2, clock.now + 7200, b"")
    timer = deadlines._timer
    assert timer is not None
    deadlines.cancel()
    assert timer.cancelled()
    assert deadlines._timer is None
    deadlines.add(3, clock.now - 1, b"")
    await until(lambda: ended == [3], 2.0)
    # One timer for the rest, armed for the earliest.
    assert deadlines._timer is not None
    assert deadlines._armed_for == clock.now + 3600
    deadlines.cancel()
