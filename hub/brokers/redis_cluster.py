"""The Redis broker on a Redis Cluster: sharded pub/sub, one connection per shard.

Selected with ``redis+cluster://host:7000[,host2:7001...]`` (``rediss+cluster://``
for TLS); the rest of the cluster is discovered. Everything else is the Redis
broker's (:mod:`hub.brokers.redis`), with two differences:

- Keys carry the channel as a hash tag (``hub:{orders}:log``, shard channel
  ``hub:{orders}``), so a channel's stream, its idempotency records and its
  announcements share one slot: the publish script stays one atomic call on
  one shard, and announces with ``SPUBLISH``, which reaches only the nodes of
  that shard (a cluster's plain ``PUBLISH`` goes to every node).
- :class:`ShardedPubSub` holds at most one pub/sub connection per master, never
  per channel or client: each is a :class:`~hub.brokers.redis_listener.PubSubListener`
  in sharded mode, holding the ``SSUBSCRIBE`` of every channel with local
  subscribers whose slot that master serves.

Topology changes: the slot map is read again when a shard's connection is
lost, when a node refuses a subscription (``MOVED``), when a node drops a
subscription by itself (``sunsubscribe``: the slot migrated, or the master was
demoted), and every ``refresh_seconds``. Channels whose slot moved are
subscribed on their new owner and refilled from their stream after the last id
delivered, exactly as after an outage of a single Redis; connections to nodes
that serve no slot any more are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from hub.brokers.redis_listener import OnMessage, PubSubListener
from hub.brokers.redis_url import RedisTarget
from hub.core.throttle import Throttle

log = logging.getLogger(__name__)

_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)


def cluster_client(
    target: RedisTarget, *, max_connections: int, timeout: float, retries: int, name: str
) -> RedisCluster:
    """A cluster-aware command client: ``max_connections`` per node, RESP2; ``retries``
    after a connection error (0 for publishes: a lost reply must not be sent twice;
    MOVED and ASK are followed whatever it is, as they mean "not run here")."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
        max_connections=max_connections,
        retry=Retry(NoBackoff(), retries),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        protocol=2,
        client_name=name,
        **target.kwargs,
    )


class ShardedPubSub:
    """At most one sharded pub/sub connection per master of the cluster.

    The broker sees one listener: ``subscribe``/``unsubscribe`` route each topic
    to the connection of the master that serves its slot; ``connected`` is true
    while every master's connection is up, its topics resumed, and the slot map
    current. ``on_resume(topics)`` is called (from that shard's connection task,
    or from the refresher) when topics must be subscribed again and refilled:
    their shard came back, or their slot moved to a shard already connected;
    ``on_lost(topics)`` when a shard's connection went, with its topics.
    """

    def __init__(
        self,
        cluster: RedisCluster,
        target: RedisTarget,
        on_message: OnMessage,
        on_resume: Callable[[list[bytes]], Awaitable[None]],
        on_lost: Callable[[list[bytes]], None],
        *,
        timeout: float = 5.0,
        refresh_seconds: float = 5.0,
        listener_options: Mapping[str, Any] | None = None,
        log_seconds: float = 60.0,
    ) -> None:
        self._cluster = cluster
        self._target = target
        self._on_message = on_message
        self._on_resume = on_resume
        self._on_lost = on_lost
        self.timeout = timeout
        self.refresh_seconds = refresh_seconds
        self._listener_options = dict(listener_options or {})
        self._listeners: dict[str, PubSubListener] = {}
        # The masters whose connection is up and whose topics were resumed on it.
        self._resumed: set[str] = set()
        # Every topic wanted, and the master ("host:port") it is subscribed on, or is to be.
        self._owner: dict[bytes, str] = {}
        # Topics whose slot moved to a master that was connected already: resumed by the refresher.
        self._moved: dict[str, set[bytes]] = {}
        self._stale = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._refreshed = False
        self._refresh_lock = asyncio.Lock()
        self._log = Throttle(log, log_seconds)
        # Slot-map reads, and topics moved to another master, since start.
        self.refreshes = 0
        self.moved = 0

    # -- what the broker uses ------------------------------------------------

    @property
    def connected(self) -> bool:
        return (
            self._refreshed
            and not self._stale.is_set()
            and not self._moved
            and bool(self._listeners)
            and all(
                node in self._resumed and listener.connected for node, listener in self._listeners.items()
            )
        )

    @property
    def shards(self) -> Collection[str]:
        """The masters this process holds a pub/sub connection to (or is connecting)."""
        return self._listeners.keys()

    async def start(self) -> None:
        try:
            await self._refresh_map()
        except _ERRORS as exc:
            self._log.hit("reading the cluster's slot map failed: %s; retrying", exc)
            self._stale.set()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="redis-cluster-refresh")
        await asyncio.gather(*(listener.started() for listener in list(self._listeners.values())))

    async def stop(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        listeners, self._listeners = list(self._listeners.values()), {}
        await asyncio.gather(*(listener.stop() for listener in listeners))
        self._log.flush()

    async def subscribe(self, topics: Iterable[bytes]) -> None:
        """SSUBSCRIBE each topic on its master's connection, confirmed; a MOVED reads the
        slot map again and tries once more."""
        topics = list(topics)
        for attempt in range(2):
            groups: dict[str, list[bytes]] = {}
            for t in topics:
                node = self._node_for(t)
                self._owner[t] = node
                groups.setdefault(node, []).append(t)
            try:
                await asyncio.gather(
                    *(self._listener(node).subscribe(group) for node, group in groups.items())
                )
                return
            except ResponseError as exc:  # MOVED: the slot map is stale
                self._stale.set()
                if attempt:
                    raise RedisConnectionError(f"the cluster refused a subscription: {exc}") from exc
                await self._refresh_map()

    async def unsubscribe(self, topics: Iterable[bytes]) -> None:
        groups: dict[str, list[bytes]] = {}
        for t in topics:
            node = self._owner.pop(t, None)
            if node is not None:
                groups.setdefault(node, []).append(t)
            for moved in self._moved.values():
                moved.discard(t)
        for node, group in groups.items():
            listener = self._listeners.get(node)
            if listener is not None and listener.connected:
                with contextlib.suppress(*_ERRORS):
                    await listener.unsubscribe(group)

    # -- shards ---------------------------------------------------------------

    def _node_for(self, t: bytes) -> str:
        nodes = self._cluster.nodes_manager.slots_cache.get(key_slot(t))
        if not nodes:
            raise RedisConnectionError(f"no master serves the slot of {t!r}: the cluster is down")
        return str(nodes[0].name)

    def _topics_of(self, node: str) -> list[bytes]:
        return [t for t, owner in self._owner.items() if owner == node]

    def _listener(self, node: str) -> PubSubListener:
        """The connection to ``node``, made (and launched) on first use."""
        listener = self._listeners.get(node)
        if listener is None:
            listener = self._listeners[node] = self._make_listener(node)
            listener.launch()
        return listener

    def _make_listener(self, node: str) -> PubSubListener:
        host, _, port = node.rpartition(":")
        kwargs = dict(self._target.kwargs)
        secure = bool(kwargs.pop("ssl", False))
        connection_class: type[Connection] = SSLConnection if secure else Connection

        def connect() -> AbstractConnection:
            return connection_class(
                host=host,
                port=int(port),
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                protocol=2,
                retry=Retry(NoBackoff(), 0),
                client_name="ssehub-pubsub",
                **kwargs,
            )

        async def connected() -> None:
            topics = self._topics_of(node)
            if topics:
                await self._on_resume(topics)
            self._resumed.add(node)

        def lost() -> None:
            self._resumed.discard(node)
            self._on_lost(self._topics_of(node))
            self._stale.set()  # a failover, perhaps: read the slot map again

        return PubSubListener(
            connect,
            self._on_message,
            connected,
            lost,
            sharded=True,
            on_unsubscribed=self._unsubscribed,
            name=f"redis-pubsub-{node}",
            **self._listener_options,
        )

    def _unsubscribed(self, t: bytes) -> None:
        """A node dropped a subscription by itself: its slot is served elsewhere now."""
        if t in self._owner:
            self._stale.set()

    # -- the slot map -----------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    await self._stale.wait()
            try:
                await self._refresh_map()
                await self._resume_moved()
            except _ERRORS as exc:
                self._stale.set()
                self._log.hit("following the cluster's topology failed: %s; retrying", exc)
                await asyncio.sleep(min(0.5, self.refresh_seconds))
            except Exception as exc:  # a bug must not end the loop: topology would never be followed
                log.debug("cluster refresh failed", exc_info=True)
                self._log.hit("cluster refresh failed: %r", exc)
                await asyncio.sleep(min(0.5, self.refresh_seconds))

    async def _refresh_map(self) -> None:
        """Read the slot map; reassign topics whose slot changed master; connect to new
        masters; drop connections to nodes that serve no slot any more."""
        async with self._refresh_lock:
            self._stale.clear()
            await self._cluster.nodes_manager.initialize()
            self.refreshes += 1
            slots = self._cluster.nodes_manager.slots_cache
            masters = {str(nodes[0].name) for nodes in slots.values() if nodes}
            for node in masters:
                self._listener(node)
            moved = 0
            for t, owner in list(self._owner.items()):
                node = self._node_for(t)
                if node != owner:
                    self._owner[t] = node
                    moved += 1
                    for other in self._moved.values():
                        other.discard(t)
                    if self._listeners[node].connected and node in self._resumed:
                        # Its on_connected ran already: the refresher resumes these.
                        self._moved.setdefault(node, set()).add(t)
                    # else: the connection's on_connected resumes them
            for node in [n for n in self._listeners if n not in masters]:
                self._resumed.discard(node)
                await self._listeners.pop(node).stop()
            self._refreshed = True
            if moved:
                self.moved += moved
                log.info("cluster topology changed: %d channels moved to another master", moved)

    async def _resume_moved(self) -> None:
        while self._moved:
            node, topics = self._moved.popitem()
            wanted = [t for t in topics if self._owner.get(t) == node]
            if wanted:
                try:
                    await self._on_resume(wanted)
                except BaseException:
                    self._moved.setdefault(node, set()).update(wanted)
                    raise
