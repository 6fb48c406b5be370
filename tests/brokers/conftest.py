"""Redis brokers on a shared fakeredis server (with Lua through lupa): no redis-server needed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import pytest
from fakeredis.aioredis import FakeAsyncRedisConnection

from hub.brokers.redis import RedisBroker
from hub.core.event import Event

Make = Callable[..., Awaitable[tuple[RedisBroker, list[Event]]]]


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=server)


@pytest.fixture
async def make(server: fakeredis.FakeServer) -> AsyncIterator[Make]:
    """Started brokers on the shared fake server, each with the list of events it delivered."""
    brokers: list[RedisBroker] = []

    async def make(**kwargs: object) -> tuple[RedisBroker, list[Event]]:
        options: dict[str, object] = {"ping_seconds": 0.05, "backoff_base": 0.01, "backoff_cap": 0.05}
        options.update(kwargs)
        broker = RedisBroker(
            "redis://fake:6379/0",
            connection_kwargs={"connection_class": FakeAsyncRedisConnection, "server": server},
            **options,  # type: ignore[arg-type]
        )
        delivered: list[Event] = []
        await broker.start(delivered.append)
        brokers.append(broker)
        return broker, delivered

    yield make
    for broker in brokers:
        await broker.stop()
