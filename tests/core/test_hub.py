"""The fan-out core on the memory broker, with recording sinks (no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.event import Payload
from hub.core.hub import HEARTBEAT, Hub
from hub.core.ids import Key, parse_id
from hub.core.ring import History
from hub.core.subscriber import Resume, Subscriber
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(MemoryBroker(history_size=10), heartbeat_seconds=60, max_pending_bytes=10_000)
    await h.start()
    yield h
    await h.stop()


async def publish(hub: Hub, channel: str, *values: object) -> list[str]:
    payloads = [Payload("json", orjson.dumps(v).decode()) for v in values]
    return await hub.broker.publish(channel, payloads)


async def settle() -> None:
    """Let the hub's once-per-tick flush run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def subscribe(hub: Hub, *channels: str, last_event_id: str = "") -> tuple[Subscriber, RecordingSink]:
    sink = RecordingSink()
    multi = len(channels) > 1
    sub = Subscriber(list(channels), sink, multi=multi)
    await hub.attach(sub, resumes_for(last_event_id, len(channels), multi))
    return sub, sink


def datas(sink: RecordingSink) -> list[object]:
    return [orjson.loads(e.data) for e in sink.events() if e.type == "message"]


async def test_live_events_reach_every_subscriber_once_in_order(hub: Hub) -> None:
    subs = [await subscribe(hub, "c") for _ in range(5)]
    await publish(hub, "c", 1, 2, 3)
    await settle()
    for _, sink in subs:
        assert datas(sink) == [1, 2, 3]
        # Three events of one tick went out in one write per subscriber.
        assert sink.writes == 1


async def test_batch_bytes_are_shared_not_copied_per_subscriber(hub: Hub) -> None:
    (_, a), (_, b) = await subscribe(hub, "c"), await subscribe(hub, "c")
    await publish(hub, "c", {"x": 1})
    await settle()
    assert a.data == b.data
    assert hub.stats.deliveries == 2


async def test_no_cursor_means_live_only(hub: Hub) -> None:
    await publish(hub, "c", 1, 2)
    _, sink = await subscribe(hub, "c")
    await publish(hub, "c", 3)
    await settle()
    assert datas(sink) == [3]


async def test_resume_replays_exactly_the_missed_events_then_live(hub: Hub) -> None:
    ids = await publish(hub, "c", 0, 1, 2, 3, 4)
    _, sink = await subscribe(hub, "c", last_event_id=ids[1])
    await publish(hub, "c", 5, 6)
    await settle()
    events = sink.events()
    assert [orjson.loads(e.data) for e in events] == [2, 3, 4, 5, 6]
    keys = [parse_id(e.id) or (0, 0) for e in events]
    assert keys == sorted(set(keys))


async def test_event_published_in_the_same_tick_as_the_resume_comes_once(hub: Hub) -> None:
    ids = await publish(hub, "c", 0)
    await settle()
    await publish(hub, "c", 1)  # dispatched, not flushed yet
    _, sink = await subscribe(hub, "c", last_event_id=ids[0])
    await settle()
    assert datas(sink) == [1]


async def test_events_published_while_history_is_read_are_held_not_lost(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    real_history = broker.history
    gate = asyncio.Event()

    async def slow_history(channel: str, after: Key | None, limit: int | None = None) -> History:
        result = await real_history(channel, after, limit)
        await gate.wait()  # as a Redis XRANGE would, the loop runs meanwhile
        return result

    broker.history = slow_history  # type: ignore[method-assign]
    ids = await publish(hub, "c", 0, 1)
    sink = RecordingSink()
    task = asyncio.create_task(hub.attach(Subscriber(["c"], sink), [Resume(parse_id(ids[0]))]))
    await settle()
    await publish(hub, "c", 2, 3)
    await settle()
    gate.set()
    await task
    await publish(hub, "c", 4)
    await settle()
    assert datas(sink) == [1, 2, 3, 4]


async def test_too_old_cursor_gets_a_gap_then_the_oldest_kept(hub: Hub) -> None:
    ids = await publish(hub, "c", *range(25))  # history keeps 10
    _, sink = await subscribe(hub, "c", last_event_id=ids[3])
    events = sink.events()
    assert events[0].type == "hub.gap"
    assert events[0].id == ""  # a gap must not move the browser's cursor
    assert orjson.loads(events[0].data) == {"channel": "c", "requested": ids[3], "oldest": ids[15]}
    assert [orjson.loads(e.data) for e in events[1:]] == list(range(15, 25))


async def test_cursor_at_the_edge_of_history_has_no_gap(hub: Hub) -> None:
    ids = await publish(hub, "c", *range(25))
    _, sink = await subscribe(hub, "c", last_event_id=ids[14])
    assert [e.type for e in sink.events()] == ["message"] * 10


async def test_malformed_cursor_gets_a_gap_and_all_history(hub: Hub) -> None:
    await publish(hub, "c", 1, 2)
    _, sink = await subscribe(hub, "c", last_event_id="yesterday")
    events = sink.events()
    assert events[0].type == "hub.gap"
    assert orjson.loads(events[0].data)["requested"] == "yesterday"
    assert [orjson.loads(e.data) for e in events[1:]] == [1, 2]


async def test_earliest_replays_all_kept_without_gap(hub: Hub) -> None:
    await publish(hub, "c", *range(12))
    _, sink = await subscribe(hub, "c", last_event_id="earliest")
    assert datas(sink) == list(range(2, 12))
    assert all(e.type == "message" for e in sink.events())


async def test_cursor_never_handed_out_is_a_gap_then_all_kept_and_not_a_filter(hub: Hub) -> None:
    # An id past the channel's newest was never handed out (a forged or corrupted
    # cursor, or one of another hub's): as the Redis broker does, the client is
    # told, and later events are not filtered by it.
    await publish(hub, "c", 1)
    _, sink = await subscribe(hub, "c", last_event_id="99999999999999-0")
    await publish(hub, "c", 2)
    await settle()
    events = sink.events()
    assert events[0].type == "hub.gap"
    assert orjson.loads(events[0].data)["requested"] == "99999999999999-0"
    assert datas(sink) == [1, 2]


async def test_cursor_from_before_this_process_is_a_gap() -> None:
    broker = MemoryBroker(history_size=10)
    hub = Hub(broker)
    await hub.start()
    try:
        await publish(hub, "c", 1)
        _, sink = await subscribe(hub, "c", last_event_id="1000-0")
        events = sink.events()
        assert events[0].type == "hub.gap"
        assert [e.data for e in events[1:]] == ["1"]
    finally:
        await hub.stop()


async def test_multi_channel_stream_wraps_payloads_and_resumes_every_channel(hub: Hub) -> None:
    await publish(hub, "a", "a0")
    sub, sink = await subscribe(hub, "a", "b")
    await publish(hub, "a", "a1")
    await publish(hub, "b", "b1")
    await settle()
    events = sink.events()
    assert [orjson.loads(e.data) for e in events] == [
        {"channel": "a", "data": "a1"},
        {"channel": "b", "data": "b1"},
    ]
    cursor = events[-1].id
    hub.detach(sub)
    # While away, both channels advance.
    await publish(hub, "a", "a2", "a3")
    await publish(hub, "b", "b2")
    _, again = await subscribe(hub, "a", "b", last_event_id=cursor)
    assert sorted(str(orjson.loads(e.data)["data"]) for e in again.events()) == ["a2", "a3", "b2"]
    # Order holds per channel.
    replay = [orjson.loads(e.data) for e in again.events()]
    assert [m["data"] for m in replay if m["channel"] == "a"] == ["a2", "a3"]


async def test_multi_channel_text_payload_is_a_json_string(hub: Hub) -> None:
    _, sink = await subscribe(hub, "a", "b")
    await hub.broker.publish("b", [Payload("text", "line1\nline2", event="log")])
    await settle()
    (ev,) = sink.events()
    assert ev.type == "log"
    assert orjson.loads(ev.data) == {"channel": "b", "data": "line1\nline2"}


async def test_multi_channel_malformed_cursor_gaps_every_channel(hub: Hub) -> None:
    await publish(hub, "a", 1)
    _, sink = await subscribe(hub, "a", "b", last_event_id="1-0")
    gaps = [orjson.loads(e.data) for e in sink.events() if e.type == "hub.gap"]
    # ``requested`` is what the client sent, as the README promises (issue #14).
    assert gaps == [
        {"channel": "a", "requested": "1-0", "oldest": gaps[0]["oldest"]},
        {"channel": "b", "requested": "1-0", "oldest": None},
    ]


async def test_slow_subscriber_is_cut_and_others_go_on(hub: Hub) -> None:
    _, fast = await subscribe(hub, "c")
    slow_sub, slow = await subscribe(hub, "c")
    slow.pending = 20_000  # its client stopped reading
    await publish(hub, "c", 1)
    await settle()
    assert slow.aborted
    assert slow_sub not in hub.subscribers
    assert hub.stats.slow_cut == 1
    await publish(hub, "c", 2)
    await settle()
    assert datas(fast) == [1, 2]


async def test_heartbeat_goes_to_idle_streams_only(hub: Hub) -> None:
    _, idle = await subscribe(hub, "quiet")
    _, busy = await subscribe(hub, "busy")
    for _ in range(6):
        hub.epoch += 1
        await publish(hub, "busy", 1)
        await settle()
        hub.beat()
    assert HEARTBEAT in idle.data
    assert HEARTBEAT not in busy.data


async def test_last_subscriber_leaving_releases_the_channel(hub: Hub) -> None:
    calls: list[str] = []
    broker = hub.broker
    real = broker.unsubscribe

    async def spy(channel: str) -> None:
        calls.append(channel)
        await real(channel)

    broker.unsubscribe = spy  # type: ignore[method-assign]
    a, _ = await subscribe(hub, "c")
    b, _ = await subscribe(hub, "c", "d")
    hub.detach(a)
    assert "c" in hub.channels
    hub.detach(b)
    hub.detach(b)  # twice is harmless
    await hub.drain_unsubscribes()
    assert hub.channels == {}
    assert sorted(calls) == ["c", "d"]


async def test_close_all_ends_every_stream_with_its_own_final_bytes(hub: Hub) -> None:
    sinks = [(await subscribe(hub, "c"))[1] for _ in range(3)]
    counter = iter(range(100))
    assert hub.close_all(lambda: f"retry: {next(counter)}\n".encode()) == 3
    assert [s.final for s in sinks] == [b"retry: 0\n", b"retry: 1\n", b"retry: 2\n"]
    assert hub.subscribers == {}


async def test_after_a_large_fan_out_events_of_the_next_moment_share_one_write(hub: Hub) -> None:
    subs = [await subscribe(hub, "wide") for _ in range(300)]
    await publish(hub, "wide", 0)
    await settle()
    await publish(hub, "wide", 1)
    await asyncio.sleep(0)  # a later loop iteration, within the linger
    await publish(hub, "wide", 2)
    async with asyncio.timeout(2):
        while len(datas(subs[0][1])) < 3:
            await asyncio.sleep(0.001)
    for _, sink in subs:
        assert datas(sink) == [0, 1, 2]
        assert sink.writes == 2
