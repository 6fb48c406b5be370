"""The Redis broker under Sentinel: a real master, a replica and three sentinels on loopback.

The hub asks the sentinels for the master (``redis+sentinel://``) and, after a
failover, follows the new master by itself, as after an outage: open streams
stay open and get every event once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio

from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import HubProcess
from tests.support.redis_procs import SentinelSetup, redis_cli

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def sentinel() -> Iterator[SentinelSetup]:
    setup = SentinelSetup()
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


def sentinel_node(setup: SentinelSetup) -> HubProcess:
    # A short Redis timeout: a publish caught by the failover fails fast (503).
    return HubProcess({"HUB_REDIS_URL": setup.url, "HUB_HEARTBEAT_SECONDS": "0.5", "HUB_REDIS_TIMEOUT": "1"})


def replicated(port: int) -> None:
    """Wait until the master's writes so far reached its replica."""
    assert redis_cli(port, "WAIT", "1", "5000").strip() == "1"


async def until_ready(http: httpx.AsyncClient, hub: HubProcess, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await http.get(f"{hub.url}/readyz")).status_code != 200:
            await asyncio.sleep(0.05)


async def test_the_hub_finds_the_master_through_the_sentinels(sentinel: SentinelSetup) -> None:
    a, b = sentinel_node(sentinel), sentinel_node(sentinel)
    try:
        a.start()
        b.start()
        async with client() as http, open_stream(http, f"{b.url}/channels/s/stream") as stream:
            ids = [await publish(http, a.url, "s", n) for n in range(3)]
            assert [e.id for e in await stream.wait_for(3)] == ids
        master = redis.asyncio.Redis(port=sentinel.master.port)
        try:
            assert await master.xlen("hub:s:log") == 3
        finally:
            await master.aclose()
    finally:
        a.stop()
        b.stop()


async def test_after_the_master_is_killed_the_hub_follows_the_promoted_replica(
    sentinel: SentinelSetup,
) -> None:
    a, b = sentinel_node(sentinel), sentinel_node(sentinel)
    try:
        a.start()
        b.start()
        async with (
            client() as http,
            open_stream(http, f"{a.url}/channels/fo/stream") as on_a,
            open_stream(http, f"{b.url}/channels/fo/stream") as on_b,
        ):
            acknowledged = [await publish(http, a.url, "fo", n) for n in range(5)]
            replicated(sentinel.master.port)
            old = sentinel.master.port
            sentinel.master.kill()

            # Publish all through the election: refused (503) until a master is back,
            # never accepted and lost.
            statuses: list[int] = []
            n = 5
            async with asyncio.timeout(40):
                while len(statuses) < 3 or statuses[-3:] != [202, 202, 202]:
                    answer = await http.post(f"{a.url}/channels/fo/events", json={"data": n})
                    statuses.append(answer.status_code)
                    if answer.status_code == 202:
                        acknowledged.append(answer.json()["id"])
                        n += 1
                    else:
                        assert answer.status_code == 503, answer.text
                        await asyncio.sleep(0.05)  # pacing the retries, as a client would
            assert 503 in statuses
            assert sentinel.master_port() == sentinel.replica.port != old
            await until_ready(http, b)
            acknowledged.append(await publish(http, b.url, "fo", n))

            stream: Stream
            for stream in (on_a, on_b):
                events = await stream.wait_for(len(acknowledged), timeout=30)
                assert [e.id for e in events] == acknowledged  # once each, in order, no hub.gap
                assert [e.data for e in events] == [str(i) for i in range(len(acknowledged))]
    finally:
        a.stop()
        b.stop()
    assert "re-subscribed and refilled 1 channels" in a.log()


async def test_a_sentinel_failover_is_followed_and_a_resume_reads_the_new_master(
    sentinel: SentinelSetup,
) -> None:
    hub = sentinel_node(sentinel)
    try:
        hub.start()
        async with client() as http, open_stream(http, f"{hub.url}/channels/gf/stream") as stream:
            before = [await publish(http, hub.url, "gf", n) for n in range(3)]
            replicated(sentinel.master.port)
            redis_cli(sentinel.sentinels[0].port, "SENTINEL", "FAILOVER", sentinel.name)
            async with asyncio.timeout(30):
                while sentinel.master_port() != sentinel.replica.port:
                    await asyncio.sleep(0.05)
            # The old master is a replica now: a publish that still reached it would be
            # refused (READONLY); the hub's connections go to the new one.
            async with asyncio.timeout(30):
                while True:
                    answer = await http.post(f"{hub.url}/channels/gf/events", json={"data": 3})
                    if answer.status_code == 202:
                        break
                    assert answer.status_code == 503
                    await asyncio.sleep(0.05)
            after = answer.json()["id"]
            events = await stream.wait_for(4, timeout=20)
            assert [e.id for e in events] == [*before, after]
            # A resume is answered from the new master's stream.
            headers = {"Last-Event-ID": before[0]}
            async with open_stream(http, f"{hub.url}/channels/gf/stream", headers) as resumed:
                assert [e.id for e in await resumed.wait_for(3)] == [*before[1:], after]
    finally:
        hub.stop()
