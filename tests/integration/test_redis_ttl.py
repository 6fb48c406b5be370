"""History bounded in time on a real redis-server (issue #11).

Every publish, through a hub node's broker or straight through the script,
drops the events older than the TTL (XTRIM MINID by Redis's TIME) and sets the
stream to expire a TTL after it (PEXPIRE), so idle channels leave nothing in
Redis; a resume across that is a ``hub.gap``; an active channel still keeps
``HUB_HISTORY_SIZE`` events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio

from hub.brokers.redis import RedisBroker
from hub.brokers.redis_codec import SCRIPT, stream_key
from hub.core.event import Event, Payload
from hub.core.ids import parse_id
from hub.publisher import AsyncPublisher
from tests.integration.conftest import node
from tests.support.client import client, open_stream
from tests.support.procs import RedisServer
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Make = Callable[..., Awaitable[tuple[RedisBroker, list[Event]]]]
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    # One server for the module: every test has channels of its own.
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def aredis(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(server: RedisServer) -> AsyncIterator[Make]:
    """Started brokers on the real server, each with the list of events it delivered."""
    brokers: list[RedisBroker] = []

    async def make(**kwargs: Any) -> tuple[RedisBroker, list[Event]]:
        broker = RedisBroker(server.url, ping_seconds=0.2, backoff_base=0.01, backoff_cap=0.1, **kwargs)
        delivered: list[Event] = []
        await broker.start(delivered.append)
        brokers.append(broker)
        return broker, delivered

    yield make
    for broker in brokers:
        await broker.stop()


async def until_gone(aredis: redis.asyncio.Redis, key: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while await aredis.exists(key):
            await asyncio.sleep(0.02)


async def redis_ms(aredis: redis.asyncio.Redis) -> int:
    seconds, micros = await aredis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def ids_of(aredis: redis.asyncio.Redis, key: str) -> list[str]:
    entries: Any = await aredis.xrange(key)
    return [entry_id.decode() for entry_id, _ in entries]


async def add_at(aredis: redis.asyncio.Redis, key: str, *ms: int) -> list[str]:
    """Entries as a producer would have written them ``ms`` (Redis's clock) ago."""
    added = []
    for at in ms:
        reply = await aredis.xadd(key, {"k": "json", "d": "0"}, id=f"{at}-0")
        added.append(reply.decode() if isinstance(reply, bytes) else str(reply))
    return added


def one(value: int) -> list[Payload]:
    return [Payload("json", str(value))]


async def test_every_publish_gives_the_stream_the_ttl_again(make: Make, aredis: redis.asyncio.Redis) -> None:
    broker, _ = await make(history_ttl=60)
    key = stream_key("hub", "refresh")
    await broker.publish("refresh", one(1))
    assert 0 < await aredis.pttl(key) <= 60_000
    await aredis.pexpire(key, 5_000)
    await broker.publish("refresh", one(2))
    assert 50_000 < await aredis.pttl(key) <= 60_000


async def test_an_idle_channels_stream_is_gone_after_the_ttl(make: Make, aredis: redis.asyncio.Redis) -> None:
    broker, _ = await make(history_ttl=1)
    key = stream_key("hub", "idle")
    await broker.publish("idle", one(1))
    assert 0 < await aredis.pttl(key) <= 1_000
    await until_gone(aredis, key)
    assert await aredis.keys("hub:idle*") == []


async def test_events_older_than_the_ttl_are_trimmed_and_newer_ones_stay(
    make: Make, aredis: redis.asyncio.Redis
) -> None:
    key = stream_key("hub", "age")
    now = await redis_ms(aredis)
    old, younger = await add_at(aredis, key, now - 20_000, now - 5_000)
    broker, _ = await make(history_ttl=10)
    (new,) = await broker.publish("age", one(1))
    assert await ids_of(aredis, key) == [younger, new]
    # A resume from before what was trimmed by age is told, and gets what is left.
    cold, _ = await make(history_ttl=10)
    for cursor in ((now - 30_000, 0), parse_id(old)):
        history = await cold.history("age", cursor)
        assert history.gap
        assert [e.id for e in history.events] == [younger, new]
        assert history.oldest == younger
    assert not (await cold.history("age", parse_id(younger))).gap


async def test_a_resume_across_an_expired_stream_is_a_gap_on_every_node(
    make: Make, aredis: redis.asyncio.Redis
) -> None:
    live, got = await make(history_ttl=1)
    await live.subscribe("gone")
    cold, _ = await make(history_ttl=1)
    ids = await live.publish("gone", one(1) + one(2))
    await until(lambda: len(got) == 2)
    assert not (await live.history("gone", parse_id(ids[0]))).gap
    await until_gone(aredis, stream_key("hub", "gone"))
    for broker in (live, cold):  # the one holding the events in its ring, and one reading Redis
        for cursor in ids:
            history = await broker.history("gone", parse_id(cursor))
            assert history.gap
            assert history.events == []


async def test_live_streams_get_no_gap_when_the_stream_expired_while_idle(
    make: Make, aredis: redis.asyncio.Redis
) -> None:
    broker, got = await make(history_ttl=1)
    await broker.subscribe("quiet")
    key = stream_key("hub", "quiet")
    (first,) = await broker.publish("quiet", one(1))
    await until(lambda: len(got) == 1)
    await until_gone(aredis, key)
    (second,) = await broker.publish("quiet", one(2))
    await until(lambda: got[-1].id == second)
    assert [e.id for e in got] == [first, second]
    # Deleted and written again sooner than the TTL: not an expiry; live streams are told.
    await aredis.delete(key)
    (third,) = await broker.publish("quiet", one(3))
    await until(lambda: got[-1].id == third)
    assert [e.payload.event for e in got[2:]] == ["hub.gap", None]


async def test_an_active_channel_still_keeps_history_size_events(
    make: Make, aredis: redis.asyncio.Redis
) -> None:
    broker, _ = await make(history_size=300, history_ttl=60)
    ids: list[str] = []
    for batch in range(8):
        ids += await broker.publish("busy", [Payload("json", str(batch * 50 + n)) for n in range(50)])
    assert await aredis.xlen(stream_key("hub", "busy")) >= 300
    cold, _ = await make(history_size=300, history_ttl=60)
    history = await cold.history("busy", parse_id(ids[-300]))
    assert not history.gap
    assert [e.id for e in history.events] == ids[-299:]
    everything = await cold.history("busy", None)
    assert [e.id for e in everything.events][-300:] == ids[-300:]


async def test_a_producer_calling_the_script_gets_the_same_with_or_without_a_ttl(
    aredis: redis.asyncio.Redis,
) -> None:
    sha = await aredis.script_load(SCRIPT)
    now = await redis_ms(aredis)
    calls: list[tuple[str, tuple[str | int, ...], int]] = [
        # The new convention: ttl=<ms> after MAXLEN, with and without the byte limit.
        ("p1", (10, "ttl=2000"), 2_000),
        ("p2", (10, "ttl=2000", 100), 2_000),
        # Earlier conventions: an hour.
        ("p3", (10,), HOUR_MS),
        ("p4", (10, 100), HOUR_MS),
    ]
    for channel, head, ttl in calls:
        key = stream_key("hub", channel)
        _, younger = await add_at(aredis, key, now - ttl - 10_000, now - ttl // 2)
        (new,) = await aredis.evalsha(sha, 1, key, *head, "json", "1", "", "")
        assert await ids_of(aredis, key) == [younger, new.decode()], channel
        assert max(0, ttl - 60_000) < await aredis.pttl(key) <= ttl, channel
    # ttl=0: no age limit, and no expiry (an earlier one is removed).
    key = stream_key("hub", "p3")
    await aredis.evalsha(sha, 1, key, 10, "ttl=0", "json", "2", "", "")
    assert await aredis.pttl(key) == -1
    # A TTL of 2 s: gone by itself.
    await until_gone(aredis, stream_key("hub", "p1"))


async def test_a_resume_after_a_producers_stream_expired_is_told_by_the_hub(
    server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(server)
    hub.start()
    try:
        producer = AsyncPublisher(aredis, history_ttl=1)
        sent = await producer.publish("prod", {"n": 1})
        await until_gone(aredis, stream_key("hub", "prod"))
        url = f"{hub.url}/channels/prod/stream"
        async with client() as http, open_stream(http, url, {"Last-Event-ID": sent}) as resumed:
            (gap,) = await resumed.wait_for(1)
            assert gap.type == "hub.gap"
            assert json.loads(gap.data) == {"channel": "prod", "requested": sent, "oldest": None}
            later = await producer.publish("prod", {"n": 2})
            events = await resumed.wait_for(2)
            assert (events[1].id, events[1].data) == (later, '{"n":2}')
    finally:
        hub.stop()
