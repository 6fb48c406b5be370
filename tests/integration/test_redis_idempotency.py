"""Idempotent publishes against a real redis-server whose replies a proxy loses.

The proxy (:mod:`tests.support.cutproxy`) lets a script call reach Redis, which
runs it, and cuts the connection instead of forwarding the reply: the case
where a retry may store an event twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from hub.brokers.redis import RedisBroker
from hub.brokers.redis_codec import stream_key
from hub.core.broker import BrokerUnavailable
from hub.core.event import Payload
from tests.integration.conftest import node
from tests.support.client import client, open_stream
from tests.support.cutproxy import CutProxy
from tests.support.procs import RedisServer
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def payloads(*values: int) -> list[Payload]:
    return [Payload("json", str(v)) for v in values]


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[CutProxy]:
    cut = CutProxy(redis_server.port)
    cut.start()
    yield cut
    cut.stop()


async def _broker(url: str) -> RedisBroker:
    broker = RedisBroker(url, ping_seconds=0.2, backoff_base=0.01, backoff_cap=0.05)
    await broker.start(lambda _: None)
    await until(lambda: broker.ready, timeout=10)
    return broker


async def _ids(observer: redis.asyncio.Redis, channel: str) -> list[str]:
    entries: Any = await observer.xrange(stream_key("hub", channel))
    return [entry_id.decode() for entry_id, _ in entries]


async def test_a_reply_lost_on_a_cut_connection_is_retried_with_the_key_and_stored_once(
    redis_server: RedisServer, proxy: CutProxy
) -> None:
    broker = await _broker(proxy.url())
    observer = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await broker.publish("cut", payloads(0), "warm-up")  # the script is loaded
        proxy.cut_replies = 1
        ids = await broker.publish("cut", payloads(1), "k-1")
        assert proxy.cuts == 1  # Redis ran the first call, its reply was lost
        assert (await _ids(observer, "cut"))[1:] == ids  # stored once; the retry got its id
    finally:
        await broker.stop()
        await observer.aclose()


async def test_without_a_key_a_lost_reply_is_a_503_and_never_sent_again(
    redis_server: RedisServer, proxy: CutProxy
) -> None:
    broker = await _broker(proxy.url())
    observer = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await broker.publish("cut", payloads(0))
        proxy.cut_replies = 1
        with pytest.raises(BrokerUnavailable):
            await broker.publish("cut", payloads(1))
        # It ran once (the client may retry it, knowing it may duplicate): not twice.
        assert await observer.xlen(stream_key("hub", "cut")) == 2
        assert proxy.cuts == 1
        # Cut twice, a keyed publish fails too; the client's retry with its key gets the first id.
        proxy.cut_replies = 2
        with pytest.raises(BrokerUnavailable):
            await broker.publish("cut", payloads(2), "k-2")
        assert await observer.xlen(stream_key("hub", "cut")) == 3
        ids = await broker.publish("cut", payloads(2), "k-2")
        stored = await _ids(observer, "cut")
        assert stored[-1:] == ids
        assert len(stored) == 3
    finally:
        await broker.stop()
        await observer.aclose()


async def test_over_http_a_retried_publish_with_its_key_gets_the_first_id_and_is_delivered_once(
    redis_server: RedisServer, proxy: CutProxy, aredis: redis.asyncio.Redis
) -> None:
    hub = node(redis_server, HUB_REDIS_URL=proxy.url())
    hub.start()
    url = f"{hub.url}/channels/orders/events"
    try:
        async with client() as http, open_stream(http, f"{hub.url}/channels/orders/stream") as stream:
            warm = await http.post(url, json={"data": 0})
            assert warm.status_code == 202
            # The hub's own retry: one reply lost, the client never knows.
            proxy.cut_replies = 1
            first = await http.post(url, json={"data": 1}, headers={"Idempotency-Key": "order-1"})
            assert first.status_code == 202, first.text
            assert proxy.cuts == 1
            # Both replies lost: the client gets a 503 and retries with the same key.
            proxy.cut_replies = 2
            failed = await http.post(url, json={"data": 2}, headers={"Idempotency-Key": "order-2"})
            assert failed.status_code == 503
            assert proxy.cuts == 3
            retried = await http.post(url, json={"data": 2}, headers={"Idempotency-Key": "order-2"})
            assert retried.status_code == 202
            # And once more, as a client that never saw the 202 would.
            again = await http.post(url, json={"data": 2}, headers={"Idempotency-Key": "order-2"})
            assert again.json() == retried.json()
            # The same key for other events: refused, nothing stored.
            other = await http.post(url, json={"data": 3}, headers={"Idempotency-Key": "order-2"})
            assert (other.status_code, other.json()["error"]) == (422, "idempotency_conflict")
            bad = await http.post(url, json={"data": 3}, headers={"Idempotency-Key": "a b"})
            assert bad.status_code == 400

            ids = [warm.json()["id"], first.json()["id"], retried.json()["id"]]
            assert await _ids(aredis, "orders") == ids
            events = await stream.wait_for(3)
            assert [(e.id, e.data) for e in events] == list(zip(ids, ["0", "1", "2"], strict=True))
            final = await http.post(url, json={"data": 4})
            events = await stream.wait_for(4)
            assert [e.id for e in events] == [*ids, final.json()["id"]]  # nothing twice in between
    finally:
        hub.stop()
