"""Clients come and go by the thousand: the process keeps no Redis subscription and no channel."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
import redis.asyncio

from tests.integration.conftest import node
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CLIENTS = 1000
CHANNELS = 100
BATCH = 200


async def test_a_thousand_clients_over_a_hundred_channels_leave_nothing_behind(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    topics = [f"hub:churn-{n}" for n in range(CHANNELS)]
    try:
        async with client() as http:
            for start in range(0, CLIENTS, BATCH):
                async with AsyncExitStack() as streams:
                    names = [f"churn-{i % CHANNELS}" for i in range(start, start + BATCH)]
                    opened: list[Stream] = await asyncio.gather(
                        *(
                            streams.enter_async_context(open_stream(http, f"{hub.url}/channels/{n}/stream"))
                            for n in names
                        )
                    )
                    # ": ok" comes once subscribed: one subscription per channel, not per client.
                    counts = dict(await aredis.pubsub_numsub(*topics))
                    assert set(counts.values()) == {1}
                    for name in sorted(set(names)):
                        await publish(http, hub.url, name, start)
                    for stream in opened:
                        (event,) = await stream.wait_for(1)
                        assert event.data == str(start)

            async def nothing_left() -> bool:
                counts = dict(await aredis.pubsub_numsub(*topics))
                listing = (await http.get(f"{hub.url}/channels")).json()["channels"]
                return set(counts.values()) == {0} and listing == []

            async with asyncio.timeout(10):
                while not await nothing_left():
                    await asyncio.sleep(0.05)
        # Still one pub/sub connection (Redis lists it as a normal client once it holds no subscription).
        pubsub_clients = [c for c in await aredis.client_list() if c["name"] == "ssehub-pubsub"]
        assert [c["sub"] for c in pubsub_clients] == ["0"]
    finally:
        hub.stop()
