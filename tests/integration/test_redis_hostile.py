"""Whoever can reach Redis can publish anything: real nodes on a real redis-server stay correct.

Issue #8: a forged announcement must not wedge a channel nor reach a client;
an oversized one must cost nothing; an invalid stream entry must break neither
a resume nor a refill (nor readiness); reconnects back off; cursors Redis
cannot read from are a gap, not an outage; prefixes cannot collide; Redis's
errors reach clients in plain words.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from hub.brokers.redis_codec import SCRIPT, SCRIPT_SHA
from tests.integration.conftest import node
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import ROOT, HubProcess, RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Nodes = tuple[HubProcess, HubProcess]
U64 = 2**64 - 1


def forged(*items: dict[str, object]) -> bytes:
    return orjson.dumps({"hub": 1, "events": list(items)})


async def until_ready(http: httpx.AsyncClient, base: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while (await http.get(f"{base}/readyz")).status_code != 200:
            await asyncio.sleep(0.05)


async def test_a_forged_id_does_not_wedge_the_channel_on_any_node(
    two_nodes: Nodes, aredis: redis.asyncio.Redis
) -> None:
    a, b = two_nodes
    async with (
        client() as http,
        open_stream(http, f"{a.url}/channels/w/stream") as on_a,
        open_stream(http, f"{b.url}/channels/w/stream") as on_b,
    ):
        raw = forged({"id": "99999999999999-0", "kind": "text", "data": "pwned"})
        assert await aredis.publish("hub:w", raw) == 2
        ids = [await publish(http, a.url, "w", n) for n in range(3)]
        for stream in (on_a, on_b):
            events = await stream.wait_for(3)
            assert [(e.id, e.data) for e in events] == list(zip(ids, ["0", "1", "2"], strict=True))
            assert b"pwned" not in stream.raw
        # A client that resumes anywhere is not behind a forged id either.
        async with open_stream(http, f"{b.url}/channels/w/stream", {"Last-Event-ID": ids[0]}) as resumed:
            assert [e.id for e in await resumed.wait_for(2)] == ids[1:]


async def test_forged_gaps_and_event_types_never_reach_a_client(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        async with client() as http, open_stream(http, f"{hub.url}/channels/g/stream") as stream:
            now = time.time_ns() // 1_000_000
            for raw in (
                forged({"id": "0-1", "kind": "json", "data": '{"channel":"g"}', "event": "hub.gap"}),
                forged({"id": f"{now}-0", "kind": "json", "data": "1", "event": "a b\u2028\x00"}),
                b'{"event":"hub.gap","data":{"channel":"g","requested":null,"oldest":null}}',
                b'{"event":"x\\u2028y","data":1}',
            ):
                assert await aredis.publish("hub:g", raw) == 1
            real = await publish(http, hub.url, "g", "real")
            (event,) = await stream.wait_for(1)
            assert (event.id, event.type, event.data) == (real, "message", '"real"')
            assert b"hub.gap" not in stream.raw
        assert "dropped invalid input from Redis on channel g" in hub.log()
    finally:
        hub.stop()


async def test_an_oversized_announcement_is_dropped_at_once_without_memory_growth(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        async with client() as http, open_stream(http, f"{hub.url}/channels/big/stream") as stream:
            await publish(http, hub.url, "big", "warm-up")
            await stream.wait_for(1)
            before = hub.memory_kb("VmHWM")
            now = time.time_ns() // 1_000_000
            items = ",".join(f'{{"id":"{now}-{n}","kind":"text","data":"pwned"}}' for n in range(300_000))
            raw = b'{"hub":1,"events":[' + items.encode() + b"]}"
            assert len(raw) > 15_000_000
            assert await aredis.publish("hub:big", raw) == 1
            started = time.monotonic()
            real = await publish(http, hub.url, "big", "after")
            events = await stream.wait_for(2)
            took = time.monotonic() - started
            assert [(e.id, e.data) for e in events[1:]] == [(real, '"after"')]
            assert took < 1.0, f"the next event took {took:.2f}s"
            # Reading the message itself costs its size, and no more.
            assert hub.memory_kb("VmHWM") - before < 80_000
            assert b"pwned" not in stream.raw
    finally:
        hub.stop()


async def test_an_invalid_stored_entry_breaks_neither_a_resume_nor_readiness(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        # The script refuses it, as the HTTP API would ...
        with pytest.raises(ResponseError, match="UTF-8"):
            await aredis.eval(SCRIPT, 1, "hub:u:log", 100, "text", b"\xff", "", "")
        async with client() as http, open_stream(http, f"{hub.url}/channels/u/stream") as live:
            first = await publish(http, hub.url, "u", 1)
            await live.wait_for(1)
            # ... so it is written around it.
            reply = await aredis.xadd("hub:u:log", {"k": "text", "d": b"\xff"})
            bad = reply.decode() if isinstance(reply, bytes) else reply
            second = await publish(http, hub.url, "u", 2)
            events = await live.wait_for(3)
            gap = events[1]
            assert gap.type == "hub.gap"
            assert json.loads(gap.data) == {"channel": "u", "requested": first, "oldest": second}
            assert events[2].id == second

            url = f"{hub.url}/channels/u/stream"
            async with (
                open_stream(http, url, {"Last-Event-ID": first}) as across,
                open_stream(http, url, {"Last-Event-ID": bad}) as after,
            ):
                told = await across.wait_for(2)
                assert [e.type for e in told] == ["hub.gap", "message"]
                assert told[1].id == second
                assert [e.id for e in await after.wait_for(1)] == [second]

                # A pub/sub reconnect refills across the entry and the node is ready again.
                assert await aredis.client_kill_filter(_type="pubsub") == 1
                await until_ready(http, hub.url, 10)
                third = await publish(http, hub.url, "u", 3)
                assert (await live.wait_for(4))[3].id == third
                assert (await across.wait_for(3))[2].id == third
                assert (await after.wait_for(2))[1].id == third
                assert not any(stream.closed for stream in (live, across, after))
            assert (await http.get(f"{hub.url}/readyz")).status_code == 200
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()


async def test_the_reconnect_backoff_grows_while_redis_keeps_dropping_the_connection(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        async with client() as http, open_stream(http, f"{hub.url}/channels/k/stream") as stream:
            kills = 0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:  # every connection is cut as soon as it is up
                kills += await aredis.client_kill_filter(_type="pubsub")
                await asyncio.sleep(0.02)
            # Waits of 0.1-0.2, 0.2-0.4, 0.4-0.8 .. up to 5 s: at most 7 connections in 6 s,
            # where a backoff that starts over on each connect allows 30 or more.
            assert 3 <= kills <= 9, kills
            await until_ready(http, hub.url, 15)
            real = await publish(http, hub.url, "k", "back")
            assert (await stream.wait_for(1))[0].id == real
        log = hub.log()
        assert "Traceback" not in log
        assert log.count("pub/sub connection lost or refused") <= 2  # one line, then counted
    finally:
        hub.stop()


async def test_a_cursor_redis_cannot_read_from_is_a_gap_not_come_back_later(
    redis_server: RedisServer,
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        async with client() as http:
            ids = [await publish(http, hub.url, "h", n) for n in range(2)]
            others = [await publish(http, hub.url, "h2", n) for n in range(2)]
            for cursor in (f"{U64}-{U64}", f"{U64}-0", "99999999999999-0"):
                url = f"{hub.url}/channels/h/stream"
                async with open_stream(http, url, {"Last-Event-ID": cursor}) as s:
                    events = await s.wait_for(3)
                    assert events[0].type == "hub.gap"
                    told = json.loads(events[0].data)
                    assert told == {"channel": "h", "requested": cursor, "oldest": ids[0]}
                    assert [e.id for e in events[1:]] == ids
                    assert b"come back later" not in s.raw
            # A multi-channel cursor whose parts are past 2**64-1.
            multi = f"{hub.url}/stream?channel=h&channel=h2"
            async with open_stream(http, multi, {"Last-Event-ID": "zzzzzzzzzzzzzz_0_0"}) as s:
                events = await s.wait_for(6)
                # Each channel in turn: told of the gap, then everything it keeps.
                assert [(e.type, json.loads(e.data)["channel"]) for e in events] == [
                    ("hub.gap", "h"),
                    ("message", "h"),
                    ("message", "h"),
                    ("hub.gap", "h2"),
                    ("message", "h2"),
                    ("message", "h2"),
                ]
                assert [json.loads(e.data)["data"] for e in events if e.type == "message"] == [0, 1, 0, 1]
                assert json.loads(events[3].data)["oldest"] == others[0]
                assert b"come back later" not in s.raw
                assert not s.closed
    finally:
        hub.stop()


def test_a_prefix_holding_the_separator_is_refused_at_start_up(redis_server: RedisServer) -> None:
    env = {**os.environ, "HUB_REDIS_URL": redis_server.url, "HUB_REDIS_PREFIX": "hub:t2"}
    cmd = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the hub started with a prefix that holds ':'")
    assert proc.returncode == 2
    message = err.decode()
    assert "HUB_REDIS_PREFIX" in message
    assert "must not contain ':'" in message


async def test_a_wrongtype_error_tells_what_to_fix_and_hides_the_script(
    redis_server: RedisServer, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server)
    hub.start()
    try:
        await aredis.set("hub:w:log", "not a stream")
        async with client() as http:
            response = await http.post(f"{hub.url}/channels/w/events", json={"data": 1})
            assert response.status_code == 503
            detail = response.json()["detail"]
            assert "WRONGTYPE" in detail
            assert "an operator must delete or rename it" in detail
            for internal in (SCRIPT_SHA, "user_script", "script:", "@"):
                assert internal not in detail
            # The details are in the log, for the operator.
            assert "user_script" in hub.log()
            # Other channels are unaffected.
            assert (await http.post(f"{hub.url}/channels/ok/events", json={"data": 1})).status_code == 202
    finally:
        hub.stop()


async def test_a_burst_over_many_channels_arrives_whole_and_in_order(redis_server: RedisServer) -> None:
    """Announcements are doorbells, the streams are read: nothing lost, nothing twice."""
    hub = node(redis_server)
    hub.start()
    channels = [f"burst{n}" for n in range(20)]
    sent: dict[str, list[str]] = {c: [] for c in channels}
    try:
        async with client() as http, AsyncExitStack() as stack:
            streams: list[Stream] = [
                await stack.enter_async_context(open_stream(http, f"{hub.url}/channels/{c}/stream"))
                for c in channels
            ]

            async def produce(channel: str) -> None:
                for n in range(25):
                    sent[channel].append(await publish(http, hub.url, channel, n))

            await asyncio.gather(*(produce(c) for c in channels))
            for channel, stream in zip(channels, streams, strict=True):
                events = await stream.wait_for(25)
                assert [e.id for e in events] == sent[channel]
                assert [e.data for e in events] == [str(n) for n in range(25)]
    finally:
        hub.stop()
