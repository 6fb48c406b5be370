"""History bounded in time with Redis (issue #11), on fakeredis (Lua through lupa;
TIME, XTRIM MINID, PEXPIRE and PERSIST included). The same on a real
redis-server: tests/integration/test_redis_ttl.py."""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ResponseError

from hub.brokers import redis as redis_broker
from hub.brokers.redis_codec import SCRIPT, stream_key
from hub.core.event import Event, Payload
from hub.core.ids import parse_id
from hub.publisher import AsyncPublisher, Publisher
from tests.brokers.conftest import Make
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

KEY = stream_key("hub", "c")
HOUR_MS = 3_600_000


async def until_gone(redis: fakeredis.FakeAsyncRedis, key: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while await redis.exists(key):
            await asyncio.sleep(0.02)


async def redis_ms(redis: fakeredis.FakeAsyncRedis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def ids_of(redis: fakeredis.FakeAsyncRedis, key: str = KEY) -> list[str]:
    entries: Any = await redis.xrange(key)
    return [entry_id.decode() for entry_id, _ in entries]


def gaps(events: list[Event]) -> list[Event]:
    return [e for e in events if e.payload.event == "hub.gap"]


# -- the script -------------------------------------------------------------------


async def test_every_publish_sets_the_streams_ttl_from_its_argument_or_an_hour(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    await redis.eval(SCRIPT, 1, KEY, 10, "ttl=5000", "json", "1", "", "")
    assert 0 < await redis.pttl(KEY) <= 5000
    await redis.pexpire(KEY, 100)
    await redis.eval(SCRIPT, 1, KEY, 10, "ttl=5000", 100, "json", "2", "", "")  # with the byte limit
    assert 4000 < await redis.pttl(KEY) <= 5000  # refreshed by the publish
    # Callers of the earlier conventions, with and without the byte limit: an hour.
    await redis.eval(SCRIPT, 1, KEY, 10, "json", "3", "", "")
    assert HOUR_MS - 60_000 < await redis.pttl(KEY) <= HOUR_MS
    await redis.pexpire(KEY, 100)
    await redis.eval(SCRIPT, 1, KEY, 10, 100, "json", "4", "", "")
    assert HOUR_MS - 60_000 < await redis.pttl(KEY) <= HOUR_MS
    # ttl=0: no age limit, the stream is kept (an earlier expiry removed).
    await redis.eval(SCRIPT, 1, KEY, 10, "ttl=0", "json", "5", "", "")
    assert await redis.pttl(KEY) == -1
    assert len(await ids_of(redis)) == 5


async def test_every_publish_drops_the_entries_older_than_the_ttl_by_redis_time(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    now = await redis_ms(redis)
    old, younger = f"{now - 20_000}-0", f"{now - 5_000}-0"
    for entry_id in (old, younger):
        await redis.xadd(KEY, {"k": "json", "d": "0"}, id=entry_id)
    (new,) = await redis.eval(SCRIPT, 1, KEY, 10, "ttl=10000", "json", "1", "", "")
    assert await ids_of(redis) == [younger, new.decode()]
    # None at all with ttl=0; an hour when the caller gives no TTL.
    other = stream_key("hub", "d")
    too_old, within = f"{now - HOUR_MS - 1000}-0", f"{now - HOUR_MS + 60_000}-0"
    for entry_id in (too_old, within):
        await redis.xadd(other, {"k": "json", "d": "0"}, id=entry_id)
    (kept,) = await redis.eval(SCRIPT, 1, other, 10, "ttl=0", "json", "1", "", "")
    assert await ids_of(redis, other) == [too_old, within, kept.decode()]
    (new,) = await redis.eval(SCRIPT, 1, other, 10, "json", "2", "", "")
    assert await ids_of(redis, other) == [within, kept.decode(), new.decode()]


@pytest.mark.parametrize("value", ["-1", "", "abc", "1.5", " 5", "31536000001", "99999999999999999999"])
async def test_a_bad_ttl_is_refused_before_anything_is_written(
    redis: fakeredis.FakeAsyncRedis, value: str
) -> None:
    with pytest.raises(ResponseError, match="ttl=<ms> is 0"):
        await redis.eval(SCRIPT, 1, KEY, 10, f"ttl={value}", "json", "1", "", "")
    assert await redis.exists(KEY) == 0


async def test_the_ttl_and_the_byte_limit_go_together(redis: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(ResponseError, match="limit of 4 bytes"):
        await redis.eval(SCRIPT, 1, KEY, 10, "ttl=5000", 4, "text", "abcde", "", "")
    with pytest.raises(ResponseError, match=r"ARGV\[3\]"):
        await redis.eval(SCRIPT, 1, KEY, 10, "ttl=5000", 0, "text", "abcde", "", "")
    with pytest.raises(ResponseError, match="kind, data, event, retry"):
        await redis.eval(SCRIPT, 1, KEY, 10, 4, "ttl=5000", "text", "abcd", "", "")  # not in that order
    assert await redis.exists(KEY) == 0
    await redis.eval(SCRIPT, 1, KEY, 10, "ttl=5000", 4, "text", "abcd", "", "")
    assert 0 < await redis.pttl(KEY) <= 5000


async def test_the_publishers_pass_their_ttl(
    server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    Publisher(fakeredis.FakeRedis(server=server), history_ttl=5).publish("c", 1)
    assert 0 < await redis.pttl(KEY) <= 5000
    await AsyncPublisher(redis, history_ttl=0).publish("c", 2)
    assert await redis.pttl(KEY) == -1
    Publisher(fakeredis.FakeRedis(server=server)).publish("c", 3)  # HUB_HISTORY_TTL's default
    assert HOUR_MS - 60_000 < await redis.pttl(KEY) <= HOUR_MS
    with pytest.raises(ValueError, match="TTL"):
        Publisher(fakeredis.FakeRedis(server=server), history_ttl=-1)


# -- the broker -------------------------------------------------------------------


async def test_the_broker_publishes_with_its_history_ttl(make: Make, redis: fakeredis.FakeAsyncRedis) -> None:
    broker, _ = await make(history_ttl=5)
    await broker.publish("c", [Payload("json", "1")])
    assert 0 < await redis.pttl(KEY) <= 5000
    forever, _ = await make(history_ttl=0)
    await forever.publish("c", [Payload("json", "2")])
    assert await redis.pttl(KEY) == -1


async def test_a_resume_after_the_stream_expired_is_a_gap_on_every_node(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    live, got = await make(history_ttl=0.3)
    await live.subscribe("c")
    cold, _ = await make(history_ttl=0.3)
    ids = await live.publish("c", [Payload("json", "1"), Payload("json", "2")])
    await until(lambda: len(got) == 2)
    await until_gone(redis, KEY)
    for broker in (live, cold):  # from the ring, from the stream
        for cursor in ids:
            history = await broker.history("c", parse_id(cursor))
            assert history.gap
            assert history.events == []


async def test_the_ring_does_not_answer_a_cursor_older_than_the_ttl(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, got = await make(history_ttl=60)
    await live.subscribe("c")
    ids = await live.publish("c", [Payload("json", str(n)) for n in range(3)])
    await until(lambda: len(got) == 3)
    assert not (await live.history("c", parse_id(ids[0]))).gap
    # Two minutes later by this process's clock (Redis's stream still holds them all).
    later = time.time_ns() + 120 * 10**9
    monkeypatch.setattr(redis_broker, "time", types.SimpleNamespace(time_ns=lambda: later))
    history = await live.history("c", parse_id(ids[0]))
    assert history.gap
    assert history.events == []
    assert history.oldest is None


async def test_events_older_than_the_ttl_are_not_replayed_before_a_publish_trims_them(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    now = await redis_ms(redis)
    stale = [f"{now - 20_000}-0", f"{now - 15_000}-0"]
    fresh = f"{now - 1_000}-0"
    for entry_id in (*stale, fresh):
        await redis.xadd(KEY, {"k": "json", "d": "0"}, id=entry_id)
    broker, _ = await make(history_ttl=10)
    # Events after the cursor are older than the TTL: they are gone for the client.
    history = await broker.history("c", parse_id(stale[0]))
    assert history.gap
    assert [e.id for e in history.events] == [fresh]
    assert history.oldest == fresh
    # Nothing after this cursor is older than the TTL: nothing is missing.
    history = await broker.history("c", parse_id(stale[1]))
    assert not history.gap
    assert [e.id for e in history.events] == [fresh]
    everything = await broker.history("c", None)
    assert not everything.gap
    assert [e.id for e in everything.events] == [fresh]
    # Pages go on from the TTL's horizon, each cursor answered once.
    for _ in range(3):
        await redis.xadd(KEY, {"k": "json", "d": "0"})
    first = await broker.history("c", parse_id(stale[0]), limit=2)
    assert first.gap
    assert first.more is not None
    rest = await broker.history("c", first.more, limit=10)
    assert not rest.gap
    assert [e.id for e in first.events + rest.events] == [fresh, *(await ids_of(redis))[3:]]


async def test_live_streams_get_no_gap_when_an_idle_channels_stream_expired(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make(history_ttl=0.3)
    await broker.subscribe("c")
    (first,) = await broker.publish("c", [Payload("json", "1")])
    await until(lambda: len(got) == 1)
    await until_gone(redis, KEY)
    (second,) = await broker.publish("c", [Payload("json", "2")])
    await until(lambda: got[-1].id == second)
    assert [e.id for e in got] == [first, second]
    # A stream recreated sooner than the TTL allows did not expire: this node cannot
    # know what the old one held after its position, so its live streams are told.
    await redis.delete(KEY)
    (third,) = await broker.publish("c", [Payload("json", "3")])
    await until(lambda: got[-1].id == third)
    (gap,) = gaps(got)
    assert got[2] is gap
    assert got[3].id == third
