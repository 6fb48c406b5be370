"""A stream's idle time starts when it attaches, not at the hub's epoch 0 (issue #14)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.hub import _TICKS, HEARTBEAT, Hub
from hub.core.subscriber import Subscriber
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    # The real ticker's interval is 15 s: the test drives the epoch itself.
    h = Hub(MemoryBroker(history_size=10), heartbeat_seconds=60)
    await h.start()
    yield h
    await h.stop()


async def attach(hub: Hub, channel: str) -> RecordingSink:
    sink = RecordingSink()
    await hub.attach(Subscriber([channel], sink), resumes_for("", 1, False))
    return sink


def tick(hub: Hub) -> None:
    hub.epoch += 1
    hub.beat()


async def test_a_stream_attached_late_waits_a_whole_interval_for_its_first_heartbeat(hub: Hub) -> None:
    hub.epoch = 1000  # the process has been up a long time
    sink = await attach(hub, "late")
    hub.beat()
    for _ in range(_TICKS):
        tick(hub)
    assert HEARTBEAT not in sink.data
    tick(hub)
    assert sink.data.count(HEARTBEAT) == 1


async def test_heartbeats_go_on_once_per_interval_after_the_first(hub: Hub) -> None:
    hub.epoch = 7
    sink = await attach(hub, "quiet")
    for _ in range(3 * (_TICKS + 1)):
        tick(hub)
    assert sink.data.count(HEARTBEAT) == 3


async def test_streams_attached_at_different_times_each_get_their_own_interval(hub: Hub) -> None:
    first = await attach(hub, "a")
    tick(hub)
    tick(hub)
    second = await attach(hub, "b")
    for _ in range(_TICKS - 2):
        tick(hub)
    assert HEARTBEAT not in first.data
    assert HEARTBEAT not in second.data
    tick(hub)
    assert HEARTBEAT in first.data
    assert HEARTBEAT not in second.data
    tick(hub)
    tick(hub)
    assert HEARTBEAT in second.data
