"""Property: whatever the interleaving of attach, detach, publish, flush and
connections going away, every subscriber still attached gets every event of
its channels exactly once, in order, from where it asked to start."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.brokers.memory import MemoryBroker
from hub.core.event import Payload
from hub.core.hub import Hub
from hub.core.ids import Key
from hub.core.ring import History
from hub.core.subscriber import Batch, Resume, Subscriber
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink

CHANNELS = ("a", "b", "c")


class YieldingBroker(MemoryBroker):
    """The memory broker, with the loop running meanwhile as a network broker's would."""

    def __init__(self, pauses: list[int]) -> None:
        super().__init__(history_size=10_000)
        self._pauses = pauses
        self._next = 0

    async def pause(self) -> None:
        n = self._pauses[self._next % len(self._pauses)] if self._pauses else 0
        self._next += 1
        for _ in range(n):
            await asyncio.sleep(0)

    async def subscribe(self, channel: str) -> None:
        await self.pause()

    async def history(self, channel: str, after: Key | None, limit: int | None = None) -> History:
        result = await super().history(channel, after, limit)
        await self.pause()
        return result

    async def last_key(self, channel: str) -> Key:
        await self.pause()
        return await super().last_key(channel)


class FlakySink(RecordingSink):
    """Small socket buffer: some writes leave bytes queued until the client reads."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("boom")
        super().write(data)

    def write_batch(self, batch: Batch) -> int:
        self.write(batch.raw)
        return self.buffered()


@dataclass
class Client:
    channels: tuple[str, ...]
    start: str  # "live", "earliest" or "cursor"
    cursor_index: int  # which published event of channels[0] to resume after (cursor)
    sink: FlakySink = field(default_factory=FlakySink)
    sub: Subscriber | None = None
    task: asyncio.Task[None] | None = None
    ended_by_test: bool = False
    # Events published per channel when its attach returned: all later ones must arrive.
    live_from: dict[str, int] = field(default_factory=dict)


attach = st.tuples(
    st.just("attach"),
    st.sampled_from([("a",), ("b",), ("c",), ("a", "b"), ("b", "c", "a")]),
    st.sampled_from(["live", "earliest", "cursor"]),
    st.integers(0, 30),
)
publish = st.tuples(st.just("publish"), st.sampled_from(CHANNELS), st.integers(1, 4))
ops = st.lists(
    st.one_of(
        attach,
        publish,
        st.tuples(st.just("tick"), st.integers(0, 12)),
        attach,
        publish,
        st.tuples(st.sampled_from(["detach", "gone", "broken"]), st.integers(0, 30)),
    ),
    min_size=4,
    max_size=40,
)


async def run(script: list[tuple[object, ...]], pauses: list[int]) -> None:
    yielding = YieldingBroker(pauses)
    hub = Hub(yielding, heartbeat_seconds=3600, max_pending_bytes=1 << 30)
    await hub.start()
    published: dict[str, list[int]] = {c: [] for c in CHANNELS}
    ids: dict[str, list[str]] = {c: [] for c in CHANNELS}
    clients: list[Client] = []
    counter = 0
    try:
        for op in script:
            kind = op[0]
            if kind == "attach":
                channels, start, index = op[1], op[2], op[3]
                assert isinstance(channels, tuple)
                assert isinstance(start, str)
                assert isinstance(index, int)
                client = Client(channels, start, index)
                first = channels[0]
                if start == "cursor" and not ids[first]:
                    client.start = "live"
                last_event_id = ""
                if client.start == "earliest":
                    last_event_id = "earliest"
                elif client.start == "cursor":
                    client.cursor_index = index % len(ids[first])
                    last_event_id = ids[first][client.cursor_index]
                multi = len(channels) > 1
                resumes: list[Resume | None] = resumes_for(last_event_id, len(channels), multi)
                if multi and client.start == "cursor":
                    # A single-channel id on a multi-channel stream is not a cursor: start live.
                    client.start = "live"
                    resumes = [None] * len(channels)
                client.sub = Subscriber(list(channels), client.sink, multi=multi)
                client.task = asyncio.create_task(hub.attach(client.sub, resumes))

                def went_live(_: object, client: Client = client) -> None:
                    client.live_from = {c: len(published[c]) for c in client.channels}

                client.task.add_done_callback(went_live)
                clients.append(client)
            elif kind == "publish":
                channel, n = op[1], op[2]
                assert isinstance(channel, str)
                assert isinstance(n, int)
                values = list(range(counter, counter + n))
                counter += n
                new = await hub.broker.publish(channel, [Payload("json", str(v)) for v in values])
                published[channel].extend(values)
                ids[channel].extend(new)
            elif kind == "tick":
                n = op[1]
                assert isinstance(n, int)
                for _ in range(n):
                    await asyncio.sleep(0)
            elif clients:
                index = op[1]
                assert isinstance(index, int)
                client = clients[index % len(clients)]
                client.ended_by_test = True
                if kind == "detach" and client.sub is not None:
                    hub.detach(client.sub)
                elif kind == "gone":
                    client.sink.gone = True
                else:
                    client.sink.broken = True
            # Every step lets the loop run a little: attaches and flushes interleave.
            await yielding.pause()
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.gather(*(c.task for c in clients if c.task is not None))
        hub.flush()

        for client in clients:
            assert client.sub is not None
            if client.ended_by_test:
                # Ended or not, it never took anything from the others (checked below).
                continue
            assert client.sub in hub.subscribers, "another client's failure ended this one"
            got: dict[str, list[int]] = {c: [] for c in client.channels}
            for event in client.sink.events():
                assert event.type == "message", event
                body = orjson.loads(event.data)
                if len(client.channels) > 1:
                    got[body["channel"]].append(body["data"])
                else:
                    got[client.channels[0]].append(body)
            for channel in client.channels:
                want = published[channel]
                have = got[channel]
                assert have == want[len(want) - len(have) :], f"{channel}: not a suffix, in order, once"
                assert len(have) >= len(want) - client.live_from[channel], f"{channel}: live events lost"
                if client.start == "earliest":
                    assert have == want
                elif client.start == "cursor" and channel == client.channels[0]:
                    assert have == want[client.cursor_index + 1 :]
    finally:
        for client in clients:
            if client.task is not None and not client.task.done():
                client.task.cancel()
        await hub.stop()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, pauses=st.lists(st.integers(0, 3), max_size=8))
def test_every_attached_subscriber_gets_every_event_once_in_order(
    script: list[tuple[object, ...]], pauses: list[int]
) -> None:
    asyncio.run(run(script, pauses))
