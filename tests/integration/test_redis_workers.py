"""``ssehub serve --workers 2``: two processes on one port, each with its own pub/sub connection."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
import redis.asyncio

from tests.integration.conftest import node
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def pubsub_subscriptions(aredis: redis.asyncio.Redis) -> list[int]:
    """The ``sub`` count of each hub pub/sub connection."""
    clients = await aredis.client_list()
    return sorted(int(c["sub"]) for c in clients if c["name"] == "ssehub-pubsub")


async def test_events_reach_the_clients_of_both_workers(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.args = ["--workers", "2"]
    hub.start()
    try:
        async with asyncio.timeout(20):
            while len(await pubsub_subscriptions(aredis)) != 2:
                await asyncio.sleep(0.05)
        async with client() as http, AsyncExitStack() as streams:
            opened: list[Stream] = []
            # The kernel hands connections to either worker; open streams until both hold one.
            while await pubsub_subscriptions(aredis) != [1, 1]:
                assert len(opened) < 200, "every stream went to the same worker"
                opened.append(
                    await streams.enter_async_context(open_stream(http, f"{hub.url}/channels/w/stream"))
                )
            ids = [await publish(http, hub.url, "w", n) for n in range(3)]
            for stream in opened:
                events = await stream.wait_for(3)
                assert [e.id for e in events] == ids
    finally:
        hub.stop()
