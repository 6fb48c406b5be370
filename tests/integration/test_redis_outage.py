"""Redis goes away under open streams: they stay open, and end with every event once, in order."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis.asyncio

from hub.publisher import AsyncPublisher
from tests.integration.conftest import node
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def ready_status(http: httpx.AsyncClient, base: str) -> int:
    return (await http.get(f"{base}/readyz")).status_code


async def until_ready_is(http: httpx.AsyncClient, base: str, status: int, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while await ready_status(http, base) != status:
            await asyncio.sleep(0.02)


async def until_heartbeats(stream: Stream, count: int, timeout: float = 10) -> None:
    """Read until ``count`` more heartbeat comments arrived."""
    want = len(stream.comments) + count
    async with asyncio.timeout(timeout):
        while len(stream.comments) < want and not stream.closed:
            await stream._pump()  # Stream has no public "read a bit more"
    assert len(stream.comments) >= want


async def test_killed_pubsub_connections_lose_no_event_published_meanwhile(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    producer = AsyncPublisher(aredis)
    published: list[str] = []
    statuses: set[int] = set()
    cuts = 0
    url = f"{hub.url}/channels/cut/stream"
    try:
        async with (
            client() as http,
            open_stream(http, url) as one,
            open_stream(http, url) as two,
        ):
            done = asyncio.Event()

            async def produce() -> None:
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    published.append(await producer.publish("cut", len(published)))
                    await asyncio.sleep(0.002)  # pacing, so that the cuts fall between events
                done.set()

            async def cut() -> None:
                nonlocal cuts
                while not done.is_set():
                    cuts += await aredis.client_kill_filter(_type="pubsub")
                    await asyncio.sleep(0.3)

            async def watch() -> None:
                while not done.is_set():
                    statuses.add(await ready_status(http, hub.url))

            await asyncio.gather(produce(), cut(), watch())
            for stream in (one, two):
                events = await stream.wait_for(len(published), timeout=15)
                assert [e.id for e in events] == published
                assert [e.data for e in events] == [str(n) for n in range(len(published))]
            await until_ready_is(http, hub.url, 200)
        assert cuts >= 3
        assert statuses == {200, 503}
    finally:
        hub.stop()
    assert "re-subscribed and refilled 1 channels" in hub.log()


async def test_a_redis_restart_keeps_streams_open_tells_them_of_the_reset_and_loses_no_later_event(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    url = f"{hub.url}/channels/restart/stream"
    try:
        async with (
            client() as http,
            open_stream(http, url) as one,
            open_stream(http, url) as two,
        ):
            ids = [await publish(http, hub.url, "restart", n) for n in range(3)]
            redis_server.stop()
            await until_ready_is(http, hub.url, 503)
            refused = await http.post(f"{hub.url}/channels/restart/events", json={"data": 99})
            assert refused.status_code == 503
            assert refused.json()["error"] == "unavailable"
            await until_heartbeats(one, 2)  # the stream is alive and says so

            redis_server.start()
            # A producer publishing through the script before the hub is back.
            producer = AsyncPublisher(aredis)
            ids += [await producer.publish("restart", n) for n in range(3, 6)]
            await until_ready_is(http, hub.url, 200)
            ids += [await publish(http, hub.url, "restart", n) for n in range(6, 9)]
            for stream in (one, two):
                events = await stream.wait_for(10, timeout=15)
                # Redis came back empty (no persistence): its history no longer reaches
                # back to the last event these streams had, so they are told, exactly
                # where the stream was recreated, and then get every later event once.
                gap, rest = events[3], events[:3] + events[4:]
                assert gap.type == "hub.gap"
                assert json.loads(gap.data) == {"channel": "restart", "requested": ids[2], "oldest": ids[3]}
                assert gap.id == ids[2]  # it has no id of its own: the cursor stays
                assert [e.id for e in rest] == ids
                assert [e.data for e in rest] == [str(n) for n in range(9)]
                assert not stream.closed
    finally:
        hub.stop()
