"""Hub nodes on one real redis-server, for the Redis broker's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from tests.support.procs import HubProcess, RedisServer


def node(redis_server: RedisServer, **env: str) -> HubProcess:
    """A hub process using ``redis_server`` (heartbeats every 0.5 s)."""
    return HubProcess({"HUB_REDIS_URL": redis_server.url, "HUB_HEARTBEAT_SECONDS": "0.5", **env})


@pytest.fixture
def two_nodes(redis_server: RedisServer) -> Iterator[tuple[HubProcess, HubProcess]]:
    a, b = node(redis_server), node(redis_server)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
async def aredis(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the test's own (a producer, or an observer of Redis)."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
