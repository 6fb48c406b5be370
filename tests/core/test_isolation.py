"""One subscriber's failure is its own end: never another subscriber's or channel's.

And a replay is written as the socket drains, never all at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.event import Payload
from hub.core.hub import HEARTBEAT, REPLAY_PAGE, REPLAY_PAGE_BYTES, REPLAY_SLICE, Hub
from hub.core.ids import Key
from hub.core.ring import History
from hub.core.subscriber import Batch, Resume, Subscriber
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink

pytestmark = pytest.mark.anyio


class BrokenSink(RecordingSink):
    """A sink whose writes raise something unexpected (a bug, not a closed socket)."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def write_batch(self, batch: Batch) -> int:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")


class StalledSink(RecordingSink):
    """A client that reads ``budget`` bytes and then stops reading for good."""

    def __init__(self, budget: int = 0) -> None:
        super().__init__()
        self.budget = budget
        self.most_queued = 0
        self.release = asyncio.Event()

    def write(self, data: bytes) -> None:
        super().write(data)
        taken = min(self.budget, len(data))
        self.budget -= taken
        self.pending += len(data) - taken
        self.most_queued = max(self.most_queued, self.pending)

    async def drained(self) -> None:
        # Returns only once the test lets the client read again, or the connection is gone.
        await self.release.wait()
        self.pending = 0

    def abort(self) -> None:
        super().abort()
        self.release.set()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(
        MemoryBroker(history_size=1000), heartbeat_seconds=60, max_pending_bytes=100_000, stall_seconds=0.2
    )
    await h.start()
    yield h
    await h.stop()


async def publish(hub: Hub, channel: str, *values: object) -> list[str]:
    return await hub.broker.publish(channel, [Payload("json", orjson.dumps(v).decode()) for v in values])


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def attach(hub: Hub, sink: RecordingSink, *channels: str, last_event_id: str = "") -> Subscriber:
    multi = len(channels) > 1
    sub = Subscriber(list(channels), sink, multi=multi)
    await hub.attach(sub, resumes_for(last_event_id, len(channels), multi))
    return sub


def datas(sink: RecordingSink) -> list[object]:
    return [orjson.loads(e.data) for e in sink.events() if e.type == "message"]


@pytest.mark.parametrize("failure", ["closed", "bug"])
async def test_a_failing_write_ends_only_that_subscriber_and_the_flush_goes_on(
    hub: Hub, failure: str
) -> None:
    # Channel "a" is flushed before "b" in the same tick: a failure on "a" must not
    # keep "b" (or a's other subscribers) from their events, now or later.
    before = await attach(hub, RecordingSink(), "a")
    bad_sink = BrokenSink() if failure == "bug" else RecordingSink()
    bad = await attach(hub, bad_sink, "a")
    after = await attach(hub, RecordingSink(), "a")
    other = await attach(hub, RecordingSink(), "b")
    multi = await attach(hub, RecordingSink(), "a", "b")
    if failure == "closed":
        bad_sink.gone = True
    for i in range(3):
        await publish(hub, "a", i)
        await publish(hub, "b", i)
        await settle()
    assert bad not in hub.subscribers
    assert bad.closed
    assert bad_sink.aborted
    assert hub.stats.gone == 1
    for sub in (before, after, other):
        assert isinstance(sub.sink, RecordingSink)
        assert datas(sub.sink) == [0, 1, 2], sub
    assert isinstance(multi.sink, RecordingSink)
    assert len(datas(multi.sink)) == 6


async def test_a_failing_multi_channel_write_ends_only_that_stream(hub: Hub) -> None:
    bad_sink = RecordingSink()
    await attach(hub, bad_sink, "a", "b")
    good_sink = RecordingSink()
    await attach(hub, good_sink, "a", "b")
    bad_sink.gone = True
    await publish(hub, "a", 1)
    await publish(hub, "b", 2)
    await settle()
    assert len(hub.subscribers) == 1
    assert [d["data"] for d in datas(good_sink)] == [1, 2]  # type: ignore[index]


async def test_heartbeat_and_close_all_survive_failing_sinks(hub: Hub) -> None:
    good = [RecordingSink() for _ in range(3)]
    bad = [BrokenSink() for _ in range(2)]
    gone = RecordingSink()
    for sink in [good[0], bad[0], gone, good[1], bad[1], good[2]]:
        await attach(hub, sink, "c")
    gone.gone = True
    hub.epoch += 10
    hub.beat()
    assert len(hub.subscribers) == 3  # the three that can be written to
    assert all(s.data.endswith(HEARTBEAT) for s in good)

    class BadClose(RecordingSink):
        def close(self, final: bytes = b"") -> None:
            raise OSError("reset by peer")

    await attach(hub, BadClose(), "c")
    assert hub.close_all(lambda: b"retry: 1\n\n") == 4
    assert not hub.subscribers
    assert all(s.closed and s.final == b"retry: 1\n\n" for s in good)


async def test_a_subscriber_gone_during_its_replay_is_detached_quietly(hub: Hub) -> None:
    await publish(hub, "c", *range(5))
    sink = RecordingSink()
    sink.gone = True
    sub = Subscriber(["c"], sink)
    await hub.attach(sub, [Resume(None)])
    assert sub.closed
    assert sub not in hub.subscribers
    assert "c" not in hub.channels
    assert hub.stats.gone == 1


async def test_a_replay_is_written_as_the_socket_drains(hub: Hub) -> None:
    big = "x" * 10_000
    await publish(hub, "c", *[big] * 200)  # 2 MB of history, 20x the pending limit
    sink = StalledSink()
    task = asyncio.create_task(attach(hub, sink, "c", last_event_id="earliest"))
    for _ in range(50):
        await asyncio.sleep(0.001)
        if sink.pending:
            break
    # One slice went out, and the replay waits for the client to read it.
    assert 0 < sink.pending <= REPLAY_SLICE + 11_000
    sink.release.set()  # the client reads from now on
    await task
    await publish(hub, "c", "live")
    await settle()
    assert datas(sink) == [big] * 200 + ["live"]
    assert sink.most_queued <= REPLAY_SLICE + 11_000
    assert hub.stats.slow_cut == 0


async def test_a_replay_slice_larger_than_the_backlog_limit_is_paced_not_cut() -> None:
    # A slice is 64 KiB and the frame that crossed it: here over the limit each time. A client
    # whose kernel buffer takes none of a slice at once but reads it (drained) must get it all.
    broker = MemoryBroker(history_size=1000)
    hub = Hub(broker, heartbeat_seconds=60, max_pending_bytes=65_536, stall_seconds=5)
    await hub.start()
    try:
        big = "x" * 30_000
        await publish(hub, "c", *[big] * 40)
        sink = StalledSink()
        sink.release.set()  # it reads everything, each time the replay waits for it
        await asyncio.wait_for(attach(hub, sink, "c", last_event_id="earliest"), timeout=10)
        assert sink.most_queued > hub.max_pending_bytes  # a slice alone was over the limit
        assert sink.most_queued <= REPLAY_SLICE + 31_000
        assert datas(sink) == [big] * 40
        assert hub.stats.slow_cut == 0
        assert not sink.aborted
    finally:
        await hub.stop()


async def test_a_replay_that_never_drains_is_cut_and_others_go_on(hub: Hub) -> None:
    await publish(hub, "c", *["x" * 10_000] * 200)
    normal = RecordingSink()
    await attach(hub, normal, "c")
    stalled = [StalledSink() for _ in range(5)]
    tasks = [asyncio.create_task(attach(hub, s, "c", last_event_id="earliest")) for s in stalled]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert hub.stats.slow_cut == 5
    assert all(s.aborted and s.most_queued <= REPLAY_SLICE + 11_000 for s in stalled)
    assert len(hub.subscribers) == 1
    await publish(hub, "c", "after")
    await settle()
    assert datas(normal) == ["after"]


async def test_live_events_held_during_a_stalled_replay_are_bounded(hub: Hub) -> None:
    hub.stall_seconds = 60  # only the held bound may cut it here
    await publish(hub, "c", *["x" * 10_000] * 20)
    stalled = StalledSink()
    task = asyncio.create_task(attach(hub, stalled, "c", last_event_id="earliest"))
    for i in range(30):  # 30 x 10 KB published live while it does not read
        await publish(hub, "c", "y" * 10_000 + str(i))
        await settle()
    await asyncio.wait_for(task, timeout=10)
    assert stalled.aborted
    assert hub.stats.slow_cut == 1
    assert not hub.subscribers


async def test_live_events_held_during_a_slow_replay_all_arrive_in_order(hub: Hub) -> None:
    await publish(hub, "c", *range(300))
    sink = StalledSink()
    sub = Subscriber(["c"], sink)
    task = asyncio.create_task(hub.attach(sub, [Resume(None)]))
    await settle()
    await publish(hub, "c", 300, 301)
    await settle()
    sink.release.set()
    await publish(hub, "c", 302)
    await task
    await publish(hub, "c", 303)
    await settle()
    assert datas(sink) == list(range(304))


def pages_read(hub: Hub, measure: Callable[[History], int]) -> list[int]:
    """``measure`` of every page of history the hub reads from now on."""
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    pages: list[int] = []
    real = broker.history

    async def counted(channel: str, after: Key | None, limit: int | None = None) -> History:
        assert limit is not None, "a replay must read history in pages"
        result = await real(channel, after, limit)
        pages.append(measure(result))
        return result

    broker.history = counted  # type: ignore[method-assign]
    return pages


async def test_history_is_read_a_page_at_a_time_and_replayed_whole(hub: Hub) -> None:
    pages = pages_read(hub, lambda h: len(h.events))
    await publish(hub, "c", *range(300))
    sink = RecordingSink()
    await attach(hub, sink, "c", last_event_id="earliest")
    assert datas(sink) == list(range(300))
    assert pages[0] == REPLAY_PAGE
    assert sum(pages) == 300
    assert len(pages) > 1


async def test_replay_pages_hold_about_the_same_bytes_whatever_the_events_size(hub: Hub) -> None:
    pages = pages_read(hub, lambda h: sum(len(e.frame) for e in h.events))
    await publish(hub, "big", *["x" * 60_000] * 40)
    await publish(hub, "small", *range(900))
    for channel in ("big", "small"):
        pages.clear()
        sink = RecordingSink()
        await attach(hub, sink, channel, last_event_id="earliest")
        assert len(datas(sink)) == (40 if channel == "big" else 900)
        # After the first page, none holds much more than the target, nor (but the last) much less.
        assert max(pages[1:]) <= 2 * REPLAY_PAGE_BYTES, (channel, pages)
        assert min(pages[1:-1], default=REPLAY_PAGE_BYTES) >= REPLAY_PAGE_BYTES // 4, (channel, pages)


async def test_history_trimmed_under_a_slow_replay_is_told_as_a_gap(hub: Hub) -> None:
    small = Hub(MemoryBroker(history_size=100), heartbeat_seconds=60, max_pending_bytes=10_000_000)
    await small.start()
    try:
        await publish(small, "c", *range(100))
        sink = StalledSink()
        task = asyncio.create_task(attach(small, sink, "c", last_event_id="earliest"))
        for _ in range(100):  # the first slice is out, the replay waits for the client
            await asyncio.sleep(0)
            if sink.pending:
                break
        assert sink.pending
        await publish(small, "c", *range(100, 300))  # pushes the rest of the first history out
        sink.release.set()
        await asyncio.wait_for(task, 5)
        events = sink.events()
        gaps = [i for i, e in enumerate(events) if e.type == "hub.gap"]
        assert len(gaps) == 1
        got = [orjson.loads(e.data) for e in events if e.type == "message"]
        # What came before the gap is a prefix of the first history, what came after is
        # all that is kept now, then live: in order, nothing twice.
        before, after = got[: gaps[0]], got[gaps[0] :]
        assert before == list(range(len(before)))
        assert after == list(range(200, 300))
    finally:
        await small.stop()
