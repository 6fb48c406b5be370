"""The Redis broker's logic on fakeredis (with Lua through lupa): no redis-server needed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import fakeredis
import orjson
import pytest
from fakeredis.aioredis import FakeAsyncRedisConnection
from pydantic import ValidationError
from redis.exceptions import ResponseError

from hub.brokers.redis import RedisBroker
from hub.brokers.redis_codec import SCRIPT, SCRIPT_SHA, stream_key
from hub.brokers.redis_listener import PubSubListener
from hub.core.broker import BrokerUnavailable, ChannelStats
from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key, format_id, parse_id
from hub.inputs import InputError, Limits
from hub.publisher import AsyncPublisher, Message, Publisher
from hub.settings import Settings
from tests.brokers.conftest import Make
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def json_payloads(*values: int) -> list[Payload]:
    return [Payload("json", str(v)) for v in values]


def datas(events: list[Event]) -> list[str]:
    return [e.payload.data for e in events]


async def test_a_publish_reaches_every_node_with_the_same_ids(make: Make) -> None:
    a, got_a = await make()
    b, got_b = await make()
    await a.subscribe("c")
    await b.subscribe("c")
    ids = await a.publish("c", [Payload("json", '{"n":1}', "e", 50), Payload("text", "two\nlines")])
    await until(lambda: len(got_a) == 2 and len(got_b) == 2)
    assert [e.id for e in got_a] == [e.id for e in got_b] == ids
    assert [e.frame for e in got_a] == [e.frame for e in got_b]
    assert got_a[0].frame == f'id: {ids[0]}\nevent: e\nretry: 50\ndata: {{"n":1}}\n\n'.encode()
    assert parse_id(ids[0]) is not None
    assert parse_id(ids[0]) < parse_id(ids[1])  # type: ignore[operator]


async def test_only_subscribed_channels_are_delivered(make: Make) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    await broker.publish("other", json_payloads(1))
    await broker.publish("c", json_payloads(2))
    await until(lambda: len(got) == 1)
    assert datas(got) == ["2"]
    await broker.unsubscribe("c")
    await broker.publish("c", json_payloads(3))
    await broker.subscribe("d")
    await broker.publish("d", json_payloads(4))
    await until(lambda: len(got) == 2)
    assert datas(got) == ["2", "4"]


async def test_unsubscribing_leaves_no_redis_subscription(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, _ = await make()
    for name in ("a", "b"):
        await broker.subscribe(name)
    assert await redis.pubsub_numsub("hub:a", "hub:b") == [(b"hub:a", 1), (b"hub:b", 1)]
    for name in ("a", "b"):
        await broker.unsubscribe(name)

    async def numsub() -> list[tuple[bytes | str, int]]:
        return list(await redis.pubsub_numsub("hub:a", "hub:b"))

    async with asyncio.timeout(3):
        while await numsub() != [(b"hub:a", 0), (b"hub:b", 0)]:
            await asyncio.sleep(0.005)
    assert not broker.channel_names()


async def test_history_is_the_same_from_the_ring_and_from_the_stream(make: Make) -> None:
    live, got = await make()
    await live.subscribe("c")
    ids = await live.publish("c", json_payloads(*range(6)))
    await until(lambda: len(got) == 6)
    cold, _ = await make()  # not subscribed: reads the stream
    for cursor in (ids[0], ids[3], ids[5]):
        after = parse_id(cursor)
        warm, far = await live.history("c", after), await cold.history("c", after)
        assert [e.id for e in warm.events] == [e.id for e in far.events] == ids[ids.index(cursor) + 1 :]
        assert not warm.gap
        assert not far.gap
        assert warm.last == far.last == parse_id(ids[-1])
    everything = await live.history("c", None)
    assert [e.id for e in everything.events] == ids
    assert await live.last_key("c") == await cold.last_key("c") == parse_id(ids[-1])
    assert await cold.last_key("never") == ZERO


async def test_a_cursor_ahead_of_what_this_process_heard_is_answered_by_redis(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    await broker.publish("c", json_payloads(1))
    await until(lambda: len(got) == 1)
    # Seen by a client on another node, its announcement not yet heard here.
    reply = await redis.xadd(stream_key("hub", "c"), {"k": "json", "d": "2"})
    ahead = reply.decode() if isinstance(reply, bytes) else reply
    history = await broker.history("c", parse_id(ahead))
    assert history.events == []
    assert not history.gap
    # So the hub puts the client at its own cursor, and the event will not come twice.
    assert format_id(history.last) == ahead


async def test_a_cursor_older_than_the_ring_is_served_from_the_stream(make: Make) -> None:
    broker, got = await make(history_size=3)
    await broker.subscribe("c")
    ids = await broker.publish("c", json_payloads(*range(8)))
    await until(lambda: len(got) == 8)
    assert (broker.channel_stats("c") or ChannelStats(None, -1)).buffered == 3
    # MAXLEN ~ trims whole stream nodes only, so the stream still holds all 8.
    history = await broker.history("c", parse_id(ids[1]))
    assert [e.id for e in history.events] == ids[2:]
    assert not history.gap


async def test_a_cursor_older_than_the_stream_is_a_gap(make: Make, redis: fakeredis.FakeAsyncRedis) -> None:
    broker, _ = await make()
    ids = await broker.publish("c", json_payloads(*range(10)))
    await redis.xtrim(stream_key("hub", "c"), maxlen=4, approximate=False)
    history = await broker.history("c", parse_id(ids[2]))
    assert history.gap
    assert history.oldest == ids[6]
    assert [e.id for e in history.events] == ids[6:]
    # From the oldest kept id on, nothing is missing. (fakeredis does not keep
    # max-deleted-entry-id; the integration tests check the newest dropped id.)
    assert not (await broker.history("c", parse_id(ids[6]))).gap


async def test_raw_publishes_are_delivered_live_without_ids(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    await redis.publish("hub:c", b'{"event":"price","data":{"p":1}}')
    await redis.publish("hub:c", b"not json")
    await until(lambda: len(got) == 2)
    assert [(e.key, e.payload) for e in got] == [
        (None, Payload("json", '{"p":1}', "price")),
        (None, Payload("text", "not json")),
    ]
    # Not in the stream, so never replayed.
    assert (await broker.history("c", None)).events == []


async def test_after_a_cut_the_missed_events_are_delivered_once_in_order(
    make: Make, server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    ids = await broker.publish("c", json_payloads(1, 2))
    await until(lambda: len(got) == 2)
    # An event whose announcement this process never heard (as if published during the cut).
    missed = await redis.xadd(stream_key("hub", "c"), {"k": "json", "d": "3"})
    server.connected = False
    await until(lambda: not broker.ready)
    with pytest.raises(BrokerUnavailable):
        await broker.publish("c", json_payloads(0))
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe("d")
    server.connected = True
    await until(lambda: broker.ready)
    ids += await broker.publish("c", json_payloads(4))
    await until(lambda: len(got) == 4)
    assert [e.id for e in got] == [
        ids[0],
        ids[1],
        missed.decode() if isinstance(missed, bytes) else missed,
        ids[2],
    ]
    assert datas(got) == ["1", "2", "3", "4"]


async def test_a_cut_longer_than_the_history_is_told_to_live_streams_as_a_gap(
    make: Make, server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    heard = await broker.publish("c", json_payloads(1, 2))
    await until(lambda: len(got) == 2)
    # Published during the cut (never announced here), then trimmed but for the newest.
    key = stream_key("hub", "c")
    for n in (3, 4, 5):
        await redis.xadd(key, {"k": "json", "d": str(n)})
    await redis.xtrim(key, maxlen=1, approximate=False)
    entries: Any = await redis.xrange(key)
    (kept,) = entries
    server.connected = False
    await until(lambda: not broker.ready)
    server.connected = True
    await until(lambda: broker.ready)
    after = await broker.publish("c", json_payloads(6))
    await until(lambda: len(got) == 5)
    gap = got[2]
    assert gap.key is None  # no id: it moves no cursor
    assert gap.payload.event == "hub.gap"
    oldest = kept[0].decode()
    assert orjson.loads(gap.payload.data) == {"channel": "c", "requested": heard[1], "oldest": oldest}
    assert gap.frame.startswith(b"event: hub.gap\ndata: ")
    assert gap.multi_body == gap.frame  # names its channel itself: not wrapped on multi streams
    assert [e.id for e in got[3:]] == [oldest, after[0]]
    assert datas(got) == ["1", "2", gap.payload.data, "5", "6"]


async def test_redis_errors_reach_callers_as_broker_unavailable(
    make: Make, server: fakeredis.FakeServer
) -> None:
    broker, _ = await make(command_timeout=0.5)
    server.connected = False
    for call in (
        broker.publish("c", json_payloads(1)),
        broker.history("c", None),
        broker.last_key("c"),
        broker.subscribe("c"),
    ):
        with pytest.raises(BrokerUnavailable):
            await call
    server.connected = True


async def test_a_hub_started_while_redis_is_down_becomes_ready_later(
    make: Make, server: fakeredis.FakeServer
) -> None:
    server.connected = False
    broker, _ = await make()
    assert not broker.ready
    server.connected = True
    await until(lambda: broker.ready)


async def test_a_burst_of_publishes_queues_for_the_bounded_pool(make: Make) -> None:
    broker, got = await make(pool_size=2)
    await broker.subscribe("c")
    results = await asyncio.gather(*(broker.publish("c", json_payloads(i)) for i in range(200)))
    ids = [r[0] for r in results]
    assert len(set(ids)) == 200
    await until(lambda: len(got) == 200)
    assert [e.id for e in got] == sorted(ids, key=lambda i: parse_id(i) or ZERO)


async def test_the_script_refuses_a_bad_call_before_writing_anything(redis: fakeredis.FakeAsyncRedis) -> None:
    sha = await redis.script_load(SCRIPT)
    assert sha == SCRIPT_SHA
    key = stream_key("hub", "c")
    with pytest.raises(ResponseError, match="event is"):
        await redis.evalsha(sha, 1, key, 10, "json", "1", "", "", "json", "2", "bad\ntype", "")
    with pytest.raises(ResponseError, match="kind"):
        await redis.evalsha(sha, 1, key, 10, "xml", "1", "", "")
    with pytest.raises(ResponseError, match="KEYS"):
        await redis.evalsha(sha, 1, "hub:c", 10, "json", "1", "", "")
    assert await redis.exists(key) == 0
    ids = await redis.evalsha(sha, 1, key, 10, "json", "1", "e", "0042")
    assert await redis.xrange(key) == [(ids[0], {b"k": b"json", b"d": b"1", b"e": b"e", b"r": b"42"})]


async def test_the_publisher_helpers_produce_replayable_events(
    make: Make, server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    sync_ids = Publisher(fakeredis.FakeRedis(server=server)).publish_many(
        "c", [Message({"a": 1}, event="x"), Message("hi", text=True, retry=10)]
    )
    async_id = await AsyncPublisher(redis).publish("c", [1, 2])
    await until(lambda: len(got) == 3)
    assert [e.id for e in got] == [*sync_ids, async_id]
    assert [e.payload for e in got] == [
        Payload("json", '{"a":1}', "x"),
        Payload("text", "hi", None, 10),
        Payload("json", "[1,2]"),
    ]
    replay = await broker.history("c", parse_id(sync_ids[0]))
    assert [e.id for e in replay.events] == [sync_ids[1], async_id]
    with pytest.raises(ValueError, match="text"):
        Publisher(fakeredis.FakeRedis(server=server)).publish("c", 1, text=True)


# -- hostile input (issue #8): everything read from Redis is untrusted --------------

U64 = 2**64 - 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def forged(*items: dict[str, object]) -> bytes:
    return orjson.dumps({"hub": 1, "events": list(items)})


async def test_a_forged_id_cannot_wedge_a_channel(make: Make, redis: fakeredis.FakeAsyncRedis) -> None:
    a, got_a = await make()
    b, got_b = await make()
    for broker in (a, b):
        await broker.subscribe("w")
    # Far ahead of any clock, then just ahead of the next real id: neither is in the stream.
    await redis.publish("hub:w", forged({"id": "99999999999999-0", "kind": "text", "data": "pwned"}))
    await redis.publish("hub:w", forged({"id": f"{now_ms() + 60_000}-0", "kind": "text", "data": "pwned"}))
    # A real id announced with other data: the data delivered is the stream's.
    ids = await a.publish("w", json_payloads(1))
    await redis.publish("hub:w", forged({"id": ids[0], "kind": "text", "data": "pwned"}))
    ids += await a.publish("w", json_payloads(2, 3))
    await until(lambda: len(got_a) == 3 and len(got_b) == 3)
    await until(lambda: a.invalid_messages == b.invalid_messages == 2)
    for got in (got_a, got_b):
        assert [e.id for e in got] == ids
        assert datas(got) == ["1", "2", "3"]
    assert await a.last_key("w") == parse_id(ids[-1])


async def test_forged_gaps_and_bad_event_types_are_dropped_and_counted(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    hostile = [
        forged({"id": "0-1", "kind": "json", "data": '{"channel":"c"}', "event": "hub.gap"}),
        forged({"id": f"{now_ms()}-0", "kind": "json", "data": "1", "event": "a b\u2028\x00"}),
        b'{"event":"hub.gap","data":{"channel":"c","requested":null,"oldest":null}}',
        b'{"event":"bad type","data":1}',
        b"\xff\xfe not UTF-8",
        b"",
    ]
    for raw in hostile:
        await redis.publish("hub:c", raw)
    ids = await broker.publish("c", json_payloads(1))
    await until(lambda: len(got) == 1 and broker.invalid_messages == len(hostile))
    assert [(e.id, e.payload) for e in got] == [(ids[0], Payload("json", "1"))]


async def test_an_invalid_stored_entry_is_skipped_with_a_gap_live_and_on_resume(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    first = await broker.publish("c", json_payloads(1))
    # Written around the script (which refuses it): text that is not UTF-8.
    reply = await redis.xadd(stream_key("hub", "c"), {"k": "text", "d": b"\xff"})
    bad = reply.decode() if isinstance(reply, bytes) else reply
    second = await broker.publish("c", json_payloads(2))
    await until(lambda: len(got) == 3)
    gap = got[1]
    assert gap.key is None
    assert gap.payload.event == "hub.gap"
    assert orjson.loads(gap.payload.data) == {"channel": "c", "requested": first[0], "oldest": second[0]}
    assert [e.id for e in (got[0], got[2])] == [first[0], second[0]]
    assert broker.invalid_messages == 1
    cold, _ = await make()
    for node in (broker, cold):  # from the ring and from the stream
        across = await node.history("c", parse_id(first[0]))
        assert across.gap
        assert [e.id for e in across.events] == second
        assert across.oldest == second[0]
        after = await node.history("c", parse_id(bad))
        assert not after.gap
        assert [e.id for e in after.events] == second
        everything = await node.history("c", None)
        assert [e.id for e in everything.events] == [first[0], second[0]]


async def test_a_refill_across_an_invalid_entry_leaves_the_node_ready(
    make: Make, server: fakeredis.FakeServer, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, got = await make()
    await broker.subscribe("c")
    first = await broker.publish("c", json_payloads(1))
    await until(lambda: len(got) == 1)
    server.connected = False
    await until(lambda: not broker.ready)
    server.connected = True
    # Stored during the cut, never announced: the refill reads it.
    await redis.xadd(stream_key("hub", "c"), {"k": "json", "d": b"{not json"})
    await until(lambda: broker.ready)
    ids = await broker.publish("c", json_payloads(2))
    await until(lambda: len(got) == 3)
    assert got[1].payload.event == "hub.gap"
    assert orjson.loads(got[1].payload.data)["requested"] == first[0]
    assert got[2].id == ids[0]
    assert broker.ready


@pytest.mark.parametrize(
    "cursor",
    [(U64, U64), (U64 + 1, 0), (5, U64 + 1), (2**70, 2**70), (U64, 0)],
)
async def test_a_cursor_out_of_any_stream_is_a_gap_then_everything_kept(make: Make, cursor: Key) -> None:
    live, got = await make()
    await live.subscribe("c")
    ids = await live.publish("c", json_payloads(1, 2))
    await until(lambda: len(got) == 2)
    cold, _ = await make()
    for broker in (live, cold):
        history = await broker.history("c", cursor)
        assert history.gap
        assert [e.id for e in history.events] == ids
        assert history.oldest == ids[0]
    assert (await cold.history("empty", cursor)).gap


async def test_redis_refusals_tell_what_to_fix_not_the_script_internals(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, _ = await make()
    await redis.set(stream_key("hub", "w"), "not a stream")
    for call in (broker.publish("w", json_payloads(1)), broker.subscribe("w"), broker.history("w", None)):
        with pytest.raises(BrokerUnavailable) as caught:
            await call
        message = str(caught.value)
        assert "WRONGTYPE" in message
        assert "delete or rename" in message
        assert SCRIPT_SHA not in message
        assert "script" not in message
    # Events the script refuses are the client's to fix: a 400, not "come back later".
    with pytest.raises(InputError) as refused:
        await broker.publish("c", [Payload("text", "")])
    assert refused.value.status == 400
    assert refused.value.detail == "refused by Redis: a text event's data must not be empty"


async def test_the_script_refuses_what_the_http_api_refuses(redis: fakeredis.FakeAsyncRedis) -> None:
    sha = await redis.script_load(SCRIPT)
    key = stream_key("hub", "c")
    refused: list[tuple[tuple[str | int | bytes, ...], str]] = [
        ((10, "text", b"\xff", "", ""), "UTF-8"),
        ((10, "text", b"ok\xed\xa0\x80", "", ""), "UTF-8"),  # a surrogate
        ((10, "text", b"\xc0\xaf", "", ""), "UTF-8"),  # overlong
        ((10, "json", b'"\xf4\x90\x80\x80"', "", ""), "UTF-8"),  # past U+10FFFF
        ((10, "text", "", "", ""), "empty"),
        ((10, "json", "{nope", "", ""), "valid JSON"),
        ((10, "json", "", "", ""), "valid JSON"),
        ((10, "json", "1", "", "86400001"), "retry"),
        ((10, "json", "1", "hub.gap", ""), "event is"),
        ((10, "json", "1", "a\u2028b", ""), "event is"),
        ((10, 4, "text", "abcde", "", ""), "limit of 4 bytes"),
        ((10, 3, "json", '"\u00e9"', "", ""), "limit of 3 bytes"),  # 4 bytes, 3 characters
        ((10, *(["json", "1", "", ""] * 1001)), "at most 1000"),
        ((10, 0, "json", "1", "", ""), "ARGV\\[2\\]"),
    ]
    for args, why in refused:
        with pytest.raises(ResponseError, match=why):
            await redis.evalsha(sha, 1, key, *args)
    assert await redis.exists(key) == 0
    # Within the limit: UTF-8 bytes, as the HTTP API counts them.
    both = ("json", '"\u00e9"', "", "", "text", "\u00e9\u00e9", "", "86400000")
    await redis.evalsha(sha, 1, key, 10, 4, *both)
    # Without the limit: the calling convention of earlier versions.
    await redis.evalsha(sha, 1, key, 10, "text", "\u00e9" * 100, "t", "")
    entries: Any = await redis.xrange(key)
    assert [fields for _, fields in entries] == [
        {b"k": b"json", b"d": '"\u00e9"'.encode()},
        {b"k": b"text", b"d": "\u00e9\u00e9".encode(), b"r": b"86400000"},
        {b"k": b"text", b"d": ("\u00e9" * 100).encode(), b"e": b"t"},
    ]


async def test_the_publisher_checks_as_the_http_api_does(server: fakeredis.FakeServer) -> None:
    client = fakeredis.FakeRedis(server=server)
    small = Publisher(client, limits=Limits(max_event_bytes=8, max_body_bytes=20))
    with pytest.raises(InputError, match="reserved"):
        small.publish("c", 1, event="hub.gap")
    with pytest.raises(InputError, match="limit is 8"):
        small.publish("c", "x" * 10)
    with pytest.raises(InputError, match="body limit of 20"):
        small.publish_many("c", [Message("abcde", text=True)] * 5)
    with pytest.raises(ValueError, match="at most 1000"):
        Publisher(client).publish_many("c", [Message(1)] * 1001)
    with pytest.raises(ValueError, match="prefix"):
        Publisher(client, prefix="hub:t2")
    assert small.publish("c", "abc", text=True)


async def test_a_prefix_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="no ':'"):
        RedisBroker("redis://fake:6379/0", prefix="hub:t2")
    with pytest.raises(ValidationError, match="must not contain ':'"):
        Settings(redis_prefix="hub:t2")
    assert Settings(redis_prefix="hub_t2").redis_prefix == "hub_t2"


async def test_invalid_input_is_logged_once_per_window_with_its_count(
    make: Make, redis: fakeredis.FakeAsyncRedis, caplog: pytest.LogCaptureFixture
) -> None:
    broker, _ = await make(log_seconds=0.3)
    await broker.subscribe("c")
    with caplog.at_level(logging.WARNING, logger="hub.brokers.redis"):
        for _ in range(50):
            await redis.publish("hub:c", b'{"event":"hub.gap","data":1}')
        await until(lambda: broker.invalid_messages == 50)
        lines = [r for r in caplog.records if r.name == "hub.brokers.redis"]
        assert len(lines) == 1
        await until(lambda: len([r for r in caplog.records if r.name == "hub.brokers.redis"]) == 2)
    first, summary = (r.getMessage() for r in caplog.records if r.name == "hub.brokers.redis")
    assert "reserved" in first
    assert "and 48 more like it" in summary
    assert "50 in all" in summary


async def test_the_reconnect_backoff_grows_while_connections_keep_failing(
    server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    def connect() -> Any:
        nonlocal attempts
        attempts += 1
        return FakeAsyncRedisConnection(server=server)

    async def on_connected() -> None:  # connects, then fails: as a refill that breaks
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    listener = PubSubListener(
        connect, lambda t, m: None, on_connected, lambda: None, backoff_base=0.01, backoff_cap=0.32
    )
    with caplog.at_level(logging.DEBUG, logger="hub.brokers.redis_listener"):
        await listener.start()
        await asyncio.sleep(1.5)
        await listener.stop()
    # Waits of up to 0.02, 0.04 .. 0.32 s: about 8 attempts, not one every 10-20 ms.
    assert attempts <= 12
    assert attempts - 1 <= listener.failures <= attempts  # the last may be cut short by stop()
    assert listener.failures >= 6
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one line, then counted (log_seconds=30)
    assert warnings[0].exc_info is None
    assert "UnicodeDecodeError" in warnings[0].getMessage()


async def test_the_backoff_starts_over_after_a_healthy_connection(server: fakeredis.FakeServer) -> None:
    async def on_connected() -> None:
        raise RuntimeError("boom")

    listener = PubSubListener(
        lambda: FakeAsyncRedisConnection(server=server),
        lambda t, m: None,
        on_connected,
        lambda: None,
        backoff_base=0.01,
        backoff_cap=0.02,
        healthy_seconds=0.0,
    )
    await listener.start()
    await until(lambda: listener.failures >= 1)
    await asyncio.sleep(0.2)
    await listener.stop()
    assert listener.failures == 1  # each connection counted as healthy: never more than one


async def test_history_pages_go_on_past_entries_skipped_as_invalid(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, _ = await make()
    ids = await broker.publish("c", json_payloads(1, 2, 3))
    # Two invalid entries end a page: the next one must start after them, not loop on them.
    await redis.xadd(stream_key("hub", "c"), {"k": "json", "d": b"{not json"})
    await redis.xadd(stream_key("hub", "c"), {"k": "text", "d": b"\xff"})
    ids += await broker.publish("c", json_payloads(4, 5))
    seen: list[str | None] = []
    gaps = 0
    history = await broker.history("c", None, 3)
    pages = 1
    while True:
        seen += [e.id for e in history.events]
        gaps += history.gap
        if history.more is None:
            break
        assert len(history.events) <= 3
        history = await broker.history("c", history.more, 3)
        pages += 1
    assert seen == list(ids)
    assert gaps == 1  # the page holding the skipped entries says so
    assert pages == 3
