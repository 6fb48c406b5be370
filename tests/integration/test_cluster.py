"""The Redis broker on a real Redis Cluster: 3 masters, 3 replicas, on loopback.

Built by :class:`tests.support.redis_procs.ClusterSetup` from Debian's
redis-server and redis-cli, torn down by PID. Hub nodes point at it with
``redis+cluster://`` and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio.cluster

from hub.publisher import AsyncPublisher
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import HubProcess
from tests.support.redis_procs import ClusterSetup, RedisProcess, redis_cli

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def cluster() -> Iterator[ClusterSetup]:
    setup = ClusterSetup()
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


def cluster_node(setup: ClusterSetup, **env: str) -> HubProcess:
    return HubProcess(
        {"HUB_REDIS_URL": setup.url, "HUB_HEARTBEAT_SECONDS": "0.5", "HUB_REDIS_TIMEOUT": "1", **env}
    )


def stream_key(channel: str) -> str:
    return f"hub:{{{channel}}}:log"


def channels_on_every_shard(setup: ClusterSetup, per_shard: int = 1) -> dict[int, list[str]]:
    """Channel names, ``per_shard`` on each master (by port)."""
    found: dict[int, list[str]] = {m.port: [] for m in setup.primaries()}
    n = 0
    while any(len(names) < per_shard for names in found.values()):
        name = f"ch{n}"
        names = found[setup.owner(stream_key(name)).port]
        if len(names) < per_shard:
            names.append(name)
        n += 1
    return found


def pubsub_clients(node: RedisProcess) -> int:
    """The hub's pub/sub connections to ``node`` (subscribed to something or not)."""
    out = redis_cli(node.port, "CLIENT", "LIST")
    return sum(1 for line in out.splitlines() if "name=ssehub-pubsub" in line)


def shard_subscribers(node: RedisProcess, channel: str) -> int:
    """Connections to ``node`` holding an SSUBSCRIBE of ``channel``'s shard channel."""
    out = redis_cli(node.port, "PUBSUB", "SHARDNUMSUB", f"hub:{{{channel}}}").split()
    return int(out[1])


async def until_ready(http: httpx.AsyncClient, hub: HubProcess, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await http.get(f"{hub.url}/readyz")).status_code != 200:
            await asyncio.sleep(0.05)


async def test_two_nodes_on_a_cluster_deliver_resume_and_hold_one_pubsub_connection_per_shard(
    cluster: ClusterSetup,
) -> None:
    by_shard = channels_on_every_shard(cluster, per_shard=4)
    names = [name for group in by_shard.values() for name in group]
    a, b = cluster_node(cluster), cluster_node(cluster)
    try:
        a.start()
        b.start()
        async with client() as http, contextlib.AsyncExitStack() as stack:
            streams: dict[str, Stream] = {}
            for name in names:
                streams[name] = await stack.enter_async_context(
                    open_stream(http, f"{b.url}/channels/{name}/stream")
                )
            # Several clients of one channel too.
            extra = [
                await stack.enter_async_context(open_stream(http, f"{b.url}/channels/{names[0]}/stream"))
                for _ in range(3)
            ]
            ids = {name: [await publish(http, a.url, name, n) for n in range(3)] for name in names}
            for name in names:
                assert [e.id for e in await streams[name].wait_for(3)] == ids[name]
            for stream in extra:
                assert [e.id for e in await stream.wait_for(3)] == ids[names[0]]

            # Idempotent publishes: the record shares the channel's slot, inside the script.
            url = f"{a.url}/channels/{names[2]}/events"
            first = await http.post(url, json={"data": "once"}, headers={"Idempotency-Key": "k1"})
            again = await http.post(url, json={"data": "once"}, headers={"Idempotency-Key": "k1"})
            assert first.status_code == again.status_code == 202
            assert first.json() == again.json()
            assert [e.id for e in await streams[names[2]].wait_for(4)] == [*ids[names[2]], first.json()["id"]]

            # At most one pub/sub connection per master per process, whatever the channels.
            for master in cluster.primaries():
                assert pubsub_clients(master) == 2  # one from each hub process
                assert len(by_shard[master.port]) == 4

            # Resume on the other node, from the cluster.
            name = names[-1]
            url = f"{a.url}/channels/{name}/stream"
            async with open_stream(http, url, {"Last-Event-ID": ids[name][0]}) as resumed:
                assert [e.id for e in await resumed.wait_for(2)] == ids[name][1:]
            # An id older than everything kept: hub.gap, then all that is kept.
            async with open_stream(http, url, {"Last-Event-ID": "1-0"}) as old:
                events = await old.wait_for(4)
                assert events[0].type == "hub.gap"
                assert [e.id for e in events[1:]] == ids[name]

            # Producers straight to the cluster: the script through a cluster client, and a
            # raw SPUBLISH on the channel's shard channel.
            seed = cluster.primaries()[0]
            producer = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=seed.port)
            try:
                direct = await AsyncPublisher(producer).publish(names[1], {"via": "script"})
                await producer.spublish(f"hub:{{{names[1]}}}", '{"via": "raw"}')
                events = await streams[names[1]].wait_for(5)
                assert events[3].id == direct
                # Live only, no id: line (the client's last id stays the script's).
                assert (events[4].id, events[4].data) == (direct, '{"via":"raw"}')
            finally:
                await producer.aclose()
    finally:
        a.stop()
        b.stop()


async def _publish_until_accepted(
    http: httpx.AsyncClient, hub: HubProcess, channel: str, n: int, statuses: list[int]
) -> str:
    """POST ``n`` until a 202; every refusal must be a 503 (never a silent loss)."""
    async with asyncio.timeout(40):
        while True:
            answer = await http.post(f"{hub.url}/channels/{channel}/events", json={"data": n})
            statuses.append(answer.status_code)
            if answer.status_code == 202:
                return str(answer.json()["id"])
            assert answer.status_code == 503, answer.text
            await asyncio.sleep(0.05)  # a client's pacing between retries


async def test_a_manual_failover_while_publishing_loses_nothing(cluster: ClusterSetup) -> None:
    channel = channels_on_every_shard(cluster)[cluster.primaries()[0].port][0]
    master = cluster.owner(stream_key(channel))
    replica = cluster.replica_of(master)
    a, b = cluster_node(cluster), cluster_node(cluster)
    try:
        a.start()
        b.start()
        async with (
            client() as http,
            open_stream(http, f"{a.url}/channels/{channel}/stream") as on_a,
            open_stream(http, f"{b.url}/channels/{channel}/stream") as on_b,
        ):
            acknowledged: list[str] = []
            statuses: list[int] = []
            failed_over = asyncio.Event()

            async def produce() -> None:
                n = 0
                while not failed_over.is_set() or n < len(acknowledged) + 5:
                    acknowledged.append(await _publish_until_accepted(http, a, channel, n, statuses))
                    n += 1
                    if failed_over.is_set() and n > 200:
                        break

            async def failover() -> None:
                while len(acknowledged) < 20:
                    await asyncio.sleep(0.01)
                redis_cli(replica.port, "CLUSTER", "FAILOVER")
                async with asyncio.timeout(30):
                    while cluster.owner_port(stream_key(channel)) != replica.port:
                        await asyncio.sleep(0.05)
                failed_over.set()

            await asyncio.gather(produce(), failover())
            await until_ready(http, a)
            await until_ready(http, b)
            acknowledged.append(await publish(http, b.url, channel, len(acknowledged)))
            for stream in (on_a, on_b):
                events = await stream.wait_for(len(acknowledged), timeout=30)
                assert [e.id for e in events] == acknowledged  # once each, in order, no hub.gap
                assert [e.data for e in events] == [str(i) for i in range(len(acknowledged))]
            assert pubsub_clients(replica) == 2  # each process moved its connection to the new master
            assert shard_subscribers(replica, channel) == 2
    finally:
        a.stop()
        b.stop()


async def test_a_killed_master_is_followed_and_publishes_meanwhile_get_503(cluster: ClusterSetup) -> None:
    channel = channels_on_every_shard(cluster)[cluster.primaries()[1].port][0]
    master = cluster.owner(stream_key(channel))
    replica = cluster.replica_of(master)
    a, b = cluster_node(cluster), cluster_node(cluster)
    try:
        a.start()
        b.start()
        async with (
            client() as http,
            open_stream(http, f"{a.url}/channels/{channel}/stream") as on_a,
            open_stream(http, f"{b.url}/channels/{channel}/stream") as on_b,
        ):
            acknowledged = [await publish(http, a.url, channel, n) for n in range(10)]
            # Replication is asynchronous: what the master acknowledged reaches the replica first.
            assert redis_cli(master.port, "WAIT", "1", "5000").strip() == "1"
            master.kill()
            statuses: list[int] = []
            for n in range(10, 20):
                acknowledged.append(await _publish_until_accepted(http, a, channel, n, statuses))
            assert 503 in statuses
            assert cluster.owner_port(stream_key(channel)) == replica.port
            await until_ready(http, b)
            acknowledged.append(await publish(http, b.url, channel, 20))
            for stream in (on_a, on_b):
                events = await stream.wait_for(len(acknowledged), timeout=30)
                assert [e.id for e in events] == acknowledged
                assert [e.data for e in events] == [str(i) for i in range(21)]
    finally:
        a.stop()
        b.stop()
    assert "channels moved to another master" in a.log()


async def test_a_slot_migrated_while_subscribed_keeps_delivering(cluster: ClusterSetup) -> None:
    by_shard = channels_on_every_shard(cluster)
    masters = cluster.primaries()
    channel = by_shard[masters[0].port][0]
    source, target = masters[0], masters[1]
    hub = cluster_node(cluster)
    try:
        hub.start()
        async with client() as http, open_stream(http, f"{hub.url}/channels/{channel}/stream") as stream:
            before = [await publish(http, hub.url, channel, n) for n in range(3)]
            await stream.wait_for(3)
            migrate_slot(stream_key(channel), source, target, masters)
            assert cluster.owner_port(stream_key(channel)) == target.port
            # While the hub reads the new slot map it may answer 503 for a moment.
            statuses: list[int] = []
            after = [await _publish_until_accepted(http, hub, channel, n, statuses) for n in range(3, 6)]
            events = await stream.wait_for(6, timeout=20)
            assert [e.id for e in events] == [*before, *after]
            assert shard_subscribers(target, channel) == 1  # subscribed on the new owner
            assert pubsub_clients(target) == pubsub_clients(source) == 1  # still one per master
    finally:
        hub.stop()


def migrate_slot(key: str, source: RedisProcess, target: RedisProcess, masters: list[RedisProcess]) -> None:
    """Move ``key``'s slot from ``source`` to ``target`` as redis-cli --cluster reshard does."""
    slot = redis_cli(source.port, "CLUSTER", "KEYSLOT", key).strip()
    source_id = redis_cli(source.port, "CLUSTER", "MYID").strip()
    target_id = redis_cli(target.port, "CLUSTER", "MYID").strip()
    redis_cli(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    redis_cli(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := redis_cli(source.port, "CLUSTER", "GETKEYSINSLOT", slot, "100").split():
        redis_cli(source.port, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
    for node in masters:
        redis_cli(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)


def test_a_redis_url_naming_a_cluster_node_stops_start_up(cluster: ClusterSetup) -> None:
    hub = HubProcess({"HUB_REDIS_URL": f"redis://127.0.0.1:{cluster.nodes[0].port}/0"})
    hub.start(ready=False)
    assert hub.proc is not None
    hub.proc.wait(30)
    assert "use redis+cluster://host:port" in hub.log()
    hub.stop()


async def test_a_burst_of_replays_past_the_pool_size_waits_for_connections_instead_of_failing(
    cluster: ClusterSetup,
) -> None:
    """redis-py's cluster client refuses a command when a node's pool is exhausted; the hub
    waits for a connection instead, as it does with one Redis (a reconnect storm)."""
    hub = cluster_node(cluster, HUB_REDIS_POOL_SIZE="2", HUB_REDIS_TIMEOUT="10")
    hub.start()
    try:
        async with client() as http:
            await until_ready(http, hub)
            ids = [await publish(http, hub.url, "storm", {"n": n}) for n in range(5)]
            url = f"{hub.url}/channels/storm/stream"
            async with contextlib.AsyncExitStack() as stack:
                streams = await asyncio.gather(
                    *(
                        stack.enter_async_context(open_stream(http, url, {"Last-Event-ID": "earliest"}))
                        for _ in range(30)
                    )
                )
                for stream in streams:
                    assert stream.response.status_code == 200
                    events = await stream.wait_for(5, timeout=30)
                    assert [e.id for e in events] == ids
        assert "Too many connections" not in hub.log()
    finally:
        hub.stop()
