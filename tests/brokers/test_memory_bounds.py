"""The memory broker's state is bounded: history expires, idle channels are
forgotten, and a byte budget holds whatever is published."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.event import Event, Payload
from hub.core.hub import Hub
from hub.core.ids import parse_id
from hub.core.subscriber import Subscriber
from hub.housekeeping import release_memory
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def payloads(*values: object) -> list[Payload]:
    return [Payload("json", orjson.dumps(v).decode()) for v in values]


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_idle_channels_are_forgotten_after_the_ttl_and_memory_goes_back() -> None:
    release_memory()
    start = rss_kb()
    broker = MemoryBroker(history_size=10, history_ttl=0.2)
    await broker.start(lambda _: None)
    for i in range(100_000):
        await broker.publish(f"user-{i}", payloads({"n": i, "pad": "x" * 100}))
    assert len(broker.channel_names()) == 100_000
    grown = rss_kb() - start
    assert grown > 20_000, "100,000 channels should cost something to keep"

    def swept() -> bool:
        broker.sweep()
        return not broker.channel_names()

    await until(swept)
    assert broker.bytes == 0
    assert broker.forgotten == 100_000
    release_memory()
    # Back to within 20% of the start (of what it grew by, at most a fifth of the start).
    assert rss_kb() - start < max(start * 0.2, grown * 0.2), (start, grown, rss_kb())


async def test_a_resume_across_expiry_gets_a_gap_and_ids_keep_increasing() -> None:
    broker = MemoryBroker(history_size=100, history_ttl=0.2)
    hub = Hub(broker, heartbeat_seconds=3600)
    await hub.start()
    try:
        old, older = await broker.publish("c", payloads("old", "older"))
        await asyncio.sleep(0.25)  # the history's age passes (a duration under test, not a wait for a state)
        broker.sweep()
        assert not broker.channel_names()
        (new,) = await broker.publish("c", payloads("new"))
        old_key, new_key = parse_id(older), parse_id(new)
        assert old_key is not None
        assert new_key is not None
        assert new_key > old_key
        sink = RecordingSink()
        await hub.attach(Subscriber(["c"], sink), resumes_for(old, 1, False))
        # "older" expired with the channel: a client at "old" is told; one at "older" missed nothing.
        events = sink.events()
        assert [e.type for e in events] == ["hub.gap", "message"]
        assert events[1].id == new
        assert not (await broker.history("c", parse_id(older))).gap
    finally:
        await hub.stop()


async def test_ids_of_a_forgotten_channel_keep_increasing_even_if_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = MemoryBroker(history_size=10, history_max_bytes=1 << 20)
    await broker.start(lambda _: None)
    # A client has seen "first" but not the event after it ...
    first, _ = await broker.publish("c", payloads(1, 1))
    # ... when the budget forgets "c" entirely (a flood on other channels) ...
    big = "x" * 50_000
    for i in range(40):
        await broker.publish(f"flood-{i}", payloads(big))
    assert "c" not in broker.channel_names()
    # ... and the wall clock steps back an hour: ids still increase.
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)
    (again,) = await broker.publish("c", payloads(2))
    assert (parse_id(again) or (0, 0)) > (parse_id(first) or (0, 0))
    # A cursor from before the forgetting is told it may have missed events. (With one event
    # before it, that client would have missed none: whether the hub said so depended on
    # whether the millisecond changed during the flood.)
    history = await broker.history("c", parse_id(first))
    assert history.gap


async def test_the_byte_budget_holds_under_a_flood_and_counts_what_events_really_cost() -> None:
    budget = 4 << 20
    broker = MemoryBroker(history_size=1000, history_max_bytes=budget)
    await broker.start(lambda _: None)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(2_000):  # 2,000 x 10 KB = 20 MB, five times the budget
            await broker.publish(f"c{i % 50}", payloads({"i": i, "pad": "y" * 10_000}))
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert broker.bytes <= budget
    assert broker.evicted > 0
    # What the budget counts is what the kept events really take, within 10%.
    assert abs((after - before) - broker.bytes) < 0.1 * budget, (after - before, broker.bytes)
    # The newest events of every channel are the ones kept.
    last = await broker.history("c49", None)
    assert orjson.loads(last.events[-1].payload.data)["i"] == 1999


async def test_the_events_of_this_publish_are_never_evicted_by_it() -> None:
    broker = MemoryBroker(history_size=1000, history_max_bytes=1 << 20)
    await broker.start(lambda _: None)
    ids = await broker.publish("one", payloads(*["z" * 100_000] * 20))  # 2 MB in one batch
    history = await broker.history("one", None)
    assert [e.id for e in history.events] == ids


async def test_expired_events_leave_an_active_channel_and_its_cursor_gets_a_gap() -> None:
    broker = MemoryBroker(history_size=100, history_ttl=0.2)
    await broker.start(lambda _: None)
    old, older = await broker.publish("c", payloads("old", "older"))
    await asyncio.sleep(0.25)  # the history's age passes
    (new,) = await broker.publish("c", payloads("new"))
    # "older" expired after "old": a client at "old" missed it.
    history = await broker.history("c", parse_id(old))
    assert history.gap
    assert [e.id for e in history.events] == [new]
    # A client at "older" missed nothing that expired; nor does one at "new".
    assert not (await broker.history("c", parse_id(older))).gap
    assert not (await broker.history("c", parse_id(new))).gap


async def test_a_channel_costs_what_the_budget_says() -> None:
    broker = MemoryBroker(history_size=10, history_max_bytes=1 << 30)
    await broker.start(lambda _: None)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(20_000):
            await broker.publish(f"user-{i}", payloads({"n": i}))
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Channels with one small event each: what the budget counts is what they take, within 20%.
    assert abs((after - before) - broker.bytes) < 0.2 * broker.bytes, (after - before, broker.bytes)


def test_an_event_costs_what_the_budget_says() -> None:
    from hub.brokers.memory import cost

    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        kept = [
            Event("channel", (1_700_000_000_000 + i, 0), Payload("json", '"' + "d" * 1000 + '"'))
            for i in range(1000)
        ]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_event = (after - before) / len(kept)
    assert abs(per_event - cost(kept[0])) < 0.1 * cost(kept[0]), (per_event, cost(kept[0]))
