"""Two hub nodes on one redis-server behave as one hub: same ids, resume anywhere."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio

from hub.publisher import AsyncPublisher
from tests.integration.conftest import node
from tests.support.client import client, open_stream, publish
from tests.support.procs import HubProcess, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Nodes = tuple[HubProcess, HubProcess]


async def test_a_publish_on_one_node_reaches_both_nodes_with_the_same_ids(two_nodes: Nodes) -> None:
    a, b = two_nodes
    async with (
        client() as http,
        open_stream(http, f"{a.url}/channels/news/stream") as on_a,
        open_stream(http, f"{b.url}/channels/news/stream") as on_b,
    ):
        ids = [await publish(http, a.url, "news", {"n": n}, event="item") for n in range(5)]
        seen_a, seen_b = await on_a.wait_for(5), await on_b.wait_for(5)
        assert [(e.id, e.type, e.data) for e in seen_a] == [(e.id, e.type, e.data) for e in seen_b]
        assert [e.id for e in seen_a] == ids
        assert [orjson.loads(e.data) for e in seen_b] == [{"n": n} for n in range(5)]


async def test_a_client_resumes_on_the_other_node_with_exactly_the_missed_events(two_nodes: Nodes) -> None:
    a, b = two_nodes
    async with client() as http:
        async with open_stream(http, f"{a.url}/channels/feed/stream") as first:
            ids = [await publish(http, a.url, "feed", n) for n in range(10)]
            read = (await first.wait_for(4))[:4]
        assert [e.id for e in read] == ids[:4]
        ids += [await publish(http, a.url, "feed", n) for n in range(10, 15)]

        async def more() -> list[str]:
            # Published while the client resumes: the replay/live seam must hold.
            return [await publish(http, a.url, "feed", n) for n in range(15, 25)]

        headers = {"Last-Event-ID": read[-1].id}
        async with open_stream(http, f"{b.url}/channels/feed/stream", headers) as resumed:
            ids += await more()
            # A last event: had anything come twice, it would not be 22nd.
            ids.append(await publish(http, a.url, "feed", 25))
            events = await resumed.wait_for(22)
        assert [e.id for e in events] == ids[4:]
        assert [orjson.loads(e.data) for e in events] == list(range(4, 26))


async def test_raw_publishes_reach_both_nodes_and_script_producers_get_replayable_ids(
    two_nodes: Nodes, aredis: redis.asyncio.Redis
) -> None:
    a, b = two_nodes
    producer = AsyncPublisher(aredis)
    async with (
        client() as http,
        open_stream(http, f"{a.url}/channels/raw/stream") as on_a,
        open_stream(http, f"{b.url}/channels/raw/stream") as on_b,
    ):
        # ": ok" came once both nodes had subscribed: both hear this.
        assert await aredis.publish("hub:raw", b'{"event":"tick","data":{"t":1}}') == 2
        await aredis.publish("hub:raw", b"plain text")
        for stream in (on_a, on_b):
            await stream.wait_for(2)
        first = await producer.publish("raw", {"via": "script"}, event="made")
        second = await producer.publish("raw", "text event", text=True)
        for stream in (on_a, on_b):
            events = await stream.wait_for(4)
            assert [(e.type, e.data) for e in events] == [
                ("tick", '{"t":1}'),
                ("message", "plain text"),
                ("made", '{"via":"script"}'),
                ("message", "text event"),
            ]
            assert b"id: " + first.encode() in stream.raw
            assert stream.raw.count(b"id: ") == 2  # the raw ones carry no id
        async with open_stream(http, f"{b.url}/channels/raw/stream", {"Last-Event-ID": first}) as replay:
            (event,) = await replay.wait_for(1)
            assert (event.id, event.data) == (second, "text event")


async def test_a_cursor_older_than_the_stream_gets_a_gap_then_what_is_kept(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server, HUB_HISTORY_SIZE="10")
    hub.start()
    try:
        async with client() as http:
            response = await http.post(
                f"{hub.url}/channels/old/events", json=[{"data": n} for n in range(300)]
            )
            assert response.status_code == 202, response.text
            ids: list[str] = response.json()["ids"]
            info = await aredis.xinfo_stream("hub:old:log")
            oldest = info["first-entry"][0].decode()
            kept = ids[ids.index(oldest) :]
            # MAXLEN ~ trims whole nodes: fewer than 300 kept, at least the 10 asked for.
            assert 10 <= len(kept) < 300

            async with open_stream(http, f"{hub.url}/channels/old/stream", {"Last-Event-ID": ids[0]}) as s:
                events = await s.wait_for(1 + len(kept))
                assert events[0].type == "hub.gap"
                assert orjson.loads(events[0].data) == {
                    "channel": "old",
                    "requested": ids[0],
                    "oldest": oldest,
                }
                assert [e.id for e in events[1:]] == kept

            # From the oldest kept id on, nothing was lost: no gap.
            async with open_stream(http, f"{hub.url}/channels/old/stream", {"Last-Event-ID": oldest}) as s:
                events = await s.wait_for(len(kept) - 1)
                assert [e.id for e in events] == kept[1:]
                assert all(e.type == "message" for e in events)
    finally:
        hub.stop()
