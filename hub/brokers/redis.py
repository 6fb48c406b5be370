"""The Redis broker: many hub processes and nodes behave as one hub.

- Ids and history live in one Redis stream per channel; a publish is one
  call of ``publish.lua``, which ``XADD``s and ``PUBLISH``es an announcement
  with the new ids atomically.
- Each process holds one pub/sub connection (:mod:`hub.brokers.redis_listener`)
  for the channels with local subscribers, and a bounded pool of command
  connections: a burst of commands waits for one (up to ``command_timeout``)
  instead of failing. Concurrent publishes share round trips
  (:mod:`hub.brokers.redis_batch`).
- The stream is the only source of numbered events. An announcement is a
  doorbell: the channel's stream is read after the last id this process
  handled, and what the stream holds is delivered, in id order. One reader
  task serves every channel: the channels announced while a read is in flight
  share the next one, a single ``XREAD`` (:meth:`RedisBroker._read_many`).
  Whoever can ``PUBLISH`` can therefore not make a node deliver an id, or
  data, that the stream does not hold: an id announced but not in the stream
  is counted as invalid, and a forged id far ahead can never move a channel's
  position past the events that follow (the wedge of issue #8).
- Everything read is checked as an HTTP publish is (:mod:`hub.brokers.redis_codec`):
  invalid messages are dropped, invalid stream entries skipped, both counted
  in :attr:`RedisBroker.invalid_messages` and logged at most once a minute.
  Skipping an entry is a loss for the client: it is told with a ``hub.gap``.
- Per subscribed channel, a :class:`ReplayRing` keeps what this process
  delivered, so most resumes need no round trip; older cursors read the stream.
- History is bounded in age too (``history_ttl``, HUB_HISTORY_TTL): every
  publish drops the entries older than the TTL by Redis's clock and sets the
  stream to expire that long after it, so an idle channel's stream goes by
  itself. A resume only replays events younger than the TTL: older cursors
  are answered by Redis, never by the ring, and whatever after them is gone or
  older than the TTL is told with a ``hub.gap``. Live streams of a channel
  whose stream expired while idle get no ``hub.gap`` when it comes back: this
  process delivered everything the old stream held.
- When the pub/sub connection comes back after a cut, every subscribed
  channel is re-subscribed and refilled from the stream after the last id
  this process handled; raw messages are held meanwhile, so the hub gets
  every event once, in id order.

Redis errors never leave this module raw: callers get :class:`BrokerUnavailable`
with a plain message (what to fix, never a script's SHA or Lua line), or, for
events the publish script refuses, :class:`hub.inputs.InputError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, NoReturn

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hub.brokers.redis_batch import ScriptBatcher
from hub.brokers.redis_cluster import ShardedPubSub, cluster_client
from hub.brokers.redis_codec import (
    DEFAULT_LIMITS,
    DEFAULT_TTL_SECONDS,
    SCRIPT,
    Invalid,
    StreamRead,
    addressable,
    check_prefix,
    decode_message,
    parse_key,
    read_entries,
    read_stream,
    script_args,
    script_ids,
    stream_key,
    topic,
    ttl_ms,
)
from hub.brokers.redis_listener import PubSubListener
from hub.brokers.redis_url import TlsFiles, redis_target
from hub.core.broker import Broker, BrokerUnavailable, ChannelStats, Deliver
from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key, format_id
from hub.core.ring import History, ReplayRing
from hub.core.throttle import Throttle
from hub.inputs import InputError, Limits, idempotency_conflict

log = logging.getLogger(__name__)

_REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
# Streams read by one XREAD at most.
_READ_BATCH = 512
_U64 = 2**64 - 1
# A cursor this close to the TTL's horizon is answered by Redis, not by the ring: Redis
# trims by its own clock, which may be a little ahead of this process's.
_CLOCK_SLACK_MS = 1000
# What a script error carries about the script itself: never shown to a client.
_SCRIPT_DETAIL = re.compile(r"\s*script: [0-9a-f]{40}.*$", re.DOTALL)
# Redis error codes whose cause a client's error body may name, with what to do.
_REFUSALS = {
    "OOM": "Redis is out of memory (maxmemory); an operator must free or add memory",
    "READONLY": "Redis is a read-only replica; HUB_REDIS_URL must name the primary",
    "NOAUTH": "Redis refused the hub's credentials; check HUB_REDIS_URL",
    "WRONGPASS": "Redis refused the hub's credentials; check HUB_REDIS_URL",
    "NOPERM": "Redis's ACL does not allow the hub's commands",
    "BUSY": "Redis is busy running a script",
    "LOADING": "Redis is loading its data",
    "MISCONF": "Redis cannot persist its data and refuses writes",
    "CLUSTERDOWN": "the Redis cluster is down",
}


class _Sub:
    """A channel this process is subscribed to."""

    __slots__ = (
        "base",
        "busy",
        "last",
        "name",
        "queued",
        "refilling",
        "ring",
        "skipped",
        "stream",
        "topic",
        "want",
    )

    def __init__(self, name: str, prefix: str, capacity: int, tagged: bool = False) -> None:
        self.name = name
        self.topic = topic(prefix, name, tagged).encode()
        self.stream = stream_key(prefix, name, tagged)
        self.ring = ReplayRing(capacity)
        # The ring holds every valid event after ``base`` (the newest id when
        # the subscription started); None until then.
        self.base: Key | None = None
        # The newest stream id handled: delivered to the hub, or skipped as invalid.
        self.last: Key = ZERO
        # The newest invalid entry skipped: the ring cannot answer a cursor before it.
        self.skipped: Key | None = None
        # A read of the stream is due: the newest id announced since the last
        # read started (ZERO when unknown, after an invalid announcement).
        self.want: Key | None = None
        # True while the reader's read of this stream is in flight.
        self.busy = False
        # True while the channel is refilled after a cut: the ring is incomplete.
        self.refilling = False
        # Raw (unnumbered) events heard while a read was due: delivered after it.
        self.queued: list[Event] = []

    @property
    def position(self) -> Key:
        return max(self.last, self.base or ZERO)

    @property
    def reading(self) -> bool:
        """A read is due or running: raw events wait for it, so as not to overtake it."""
        return self.refilling or self.busy or self.want is not None


class RedisBroker(Broker):
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        history_ttl: float = DEFAULT_TTL_SECONDS,
        pool_size: int = 32,
        command_timeout: float = 5.0,
        ping_seconds: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        healthy_seconds: float = 30.0,
        limits: Limits | None = None,
        log_seconds: float = 60.0,
        connection_kwargs: Mapping[str, Any] | None = None,
        idempotency_seconds: float = 300.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.prefix = check_prefix(prefix)
        # How long a publish's Idempotency-Key is remembered (HUB_IDEMPOTENCY_SECONDS).
        self.idempotency_ms = max(1, round(idempotency_seconds * 1000))
        self.history_size = history_size
        # How long history is kept (HUB_HISTORY_TTL): passed to the script on every
        # publish, in milliseconds; 0 keeps the stream, trimmed by size only.
        self.history_ttl = history_ttl
        self.ttl_ms = ttl_ms(history_ttl)
        # What an event may be (HUB_MAX_EVENT_BYTES, HUB_MAX_BODY_BYTES): the same as over HTTP.
        self.limits = limits or DEFAULT_LIMITS
        extra = dict(connection_kwargs or {})
        # One server, or the master a Sentinel names (hub/brokers/redis_url.py).
        self._target = redis_target(url, tls, command_timeout)
        # RESP2 for both: the reply shapes parsed here do not depend on redis-py's default.
        # What the URL says wins (as with redis-py's from_url), but a connection class given.
        options = {
            "socket_timeout": command_timeout,
            "socket_connect_timeout": command_timeout,
            "protocol": 2,
            **extra,
            **self._target.kwargs,
        }
        if "connection_class" in extra:
            options["connection_class"] = extra["connection_class"]
        listener_options: dict[str, Any] = {
            "ping_seconds": ping_seconds,
            "confirm_seconds": command_timeout,
            "backoff_base": backoff_base,
            "backoff_cap": backoff_cap,
            "healthy_seconds": healthy_seconds,
            "log_seconds": log_seconds,
        }
        # A cluster (redis+cluster://): tagged keys, sharded pub/sub (hub/brokers/redis_cluster.py).
        self._tagged = self._target.mode == "cluster"
        self._command_timeout = command_timeout
        # The cluster's command slots (see _init_cluster); None with one Redis.
        self._slots: asyncio.Semaphore | None = None
        self._pool: BlockingConnectionPool | None = None
        self._publish_pool: BlockingConnectionPool | None = None
        self._redis: Redis | RedisCluster
        if self._tagged:
            self._init_cluster(pool_size, command_timeout, listener_options)
            self._init_state(log_seconds)
            return
        # One retry: a pooled connection may have died with a Redis restart.
        self._pool = BlockingConnectionPool(
            max_connections=pool_size,
            timeout=command_timeout,
            retry=Retry(NoBackoff(), 1),
            client_name="ssehub",
            **options,
        )
        self._redis = Redis(connection_pool=self._pool)
        # Publishes go out one round trip at a time (the batcher), on a connection of their
        # own that redis-py never retries on: a call whose reply was lost may have run, and
        # sent again it would be stored twice. The broker retries only calls with an
        # idempotency key, which the script makes safe (see publish()).
        self._publish_pool = BlockingConnectionPool(
            max_connections=1,
            timeout=command_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="ssehub-publish",
            **options,
        )
        publisher = Redis(connection_pool=self._publish_pool)
        self._publishes = ScriptBatcher(publisher, publisher.register_script(SCRIPT))
        # Only a factory of pub/sub connections: the listener never pools them.
        self._pubsub_pool = ConnectionPool(
            retry=Retry(NoBackoff(), 0), client_name="ssehub-pubsub", **options
        )
        self._listener: PubSubListener | ShardedPubSub = PubSubListener(
            self._pubsub_pool.make_connection,
            self._on_message,
            self._on_connected,
            self._on_lost,
            **listener_options,
        )
        self._init_state(log_seconds)

    def _init_cluster(self, pool_size: int, command_timeout: float, listener_options: dict[str, Any]) -> None:
        """Clients and pub/sub for a cluster: commands through a cluster-aware client with
        ``pool_size`` connections per node at most; publishes through one that never
        sends a call again after a connection error (as ``_publish_pool``)."""
        target = self._target
        cluster = cluster_client(
            target, max_connections=pool_size, timeout=command_timeout, retries=1, name="ssehub"
        )
        # redis-py's cluster client refuses a command when a node's pool is exhausted
        # ("Too many connections") where the single-Redis pool waits: a burst of replays
        # (a reconnect storm) would end streams with 503s. Commands wait for a slot
        # instead, for at most the command timeout, as with one Redis.
        self._slots = asyncio.Semaphore(pool_size)
        self._redis = cluster
        publisher = cluster_client(
            target, max_connections=2, timeout=command_timeout, retries=0, name="ssehub-publish"
        )
        self._cluster_publisher = publisher
        self._publishes = ScriptBatcher(publisher, publisher.register_script(SCRIPT))
        self._listener = ShardedPubSub(
            cluster,
            target,
            self._on_message,
            self._on_connected,
            self._on_lost,
            timeout=command_timeout,
            listener_options=listener_options,
            log_seconds=listener_options["log_seconds"],
        )

    def _init_state(self, log_seconds: float) -> None:
        self._subs: dict[str, _Sub] = {}
        self._by_topic: dict[bytes, _Sub] = {}
        # Channels whose stream is to be read, and the one task that reads them.
        self._due: dict[_Sub, None] = {}
        self._reader: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._up = False
        # Messages and stream entries dropped as invalid, since start.
        self.invalid_messages = 0
        # Read by /metrics at scrape time: pub/sub messages received, reconnections
        # after a lost or refused connection, and the time spent without Redis.
        self.messages_received = 0
        self.reconnects = 0
        self._outage = 0.0
        self._down_since: float | None = None
        self._invalid_log = Throttle(log, log_seconds)
        self._error_log = Throttle(log, log_seconds)
        self._lost_log = Throttle(log, log_seconds)

    # -- life cycle ---------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        if not self._tagged:
            await self._refuse_a_cluster()
        await self._listener.start()
        if not self.ready:
            self._down_since = time.monotonic()
            log.error("Redis is unreachable; retrying in the background (not ready meanwhile)")

    async def stop(self) -> None:
        await self._listener.stop()
        self._up = False
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self._due.clear()
        await self._publishes.close()
        await self._redis.aclose()
        if self._pool is not None:
            await self._pool.disconnect()
        if self._publish_pool is not None:
            await self._publish_pool.disconnect()
        if self._tagged:
            await self._cluster_publisher.aclose()
        await self._target.close()
        self._deliver = None
        for throttle in (self._invalid_log, self._error_log, self._lost_log):
            throttle.flush()

    @property
    def ready(self) -> bool:
        # On a cluster: every shard's pub/sub connection up and its channels refilled.
        return self._listener.connected if self._tagged else self._up

    @property
    def shards(self) -> int:
        """Pub/sub connections of this process: 1, or on a cluster one per master."""
        return len(self._listener.shards) if isinstance(self._listener, ShardedPubSub) else 1

    async def _on_connected(self, topics: Collection[bytes] | None = None) -> None:
        """Re-subscribe everything (on a cluster: ``topics``, those of one shard), then
        refill each channel from its stream."""
        if topics is None:
            subs = list(self._subs.values())
        else:
            subs = [sub for t in topics if (sub := self._by_topic.get(t)) is not None]
        for sub in subs:
            sub.refilling = True
        await self._listener.subscribe(sub.topic for sub in subs)
        for sub in subs:
            if self._subs.get(sub.name) is sub:
                try:
                    await self._refill(sub)
                except _REDIS_ERRORS:
                    raise  # the connection is gone again: the next one refills
                except Exception as exc:  # a bug: this channel must not keep the node unready
                    sub.refilling = False
                    log.debug("refill of %s failed", sub.name, exc_info=True)
                    self._error_log.hit("refill of %s failed: %r", sub.name, exc)
        self._up = self.ready if self._tagged else True
        if self._down_since is not None and self._up:
            self.reconnects += 1
            self._outage += time.monotonic() - self._down_since
            self._down_since = None
        if subs:
            log.info("Redis is back: re-subscribed and refilled %d channels", len(subs))

    async def _refuse_a_cluster(self) -> None:
        """A redis:// URL naming a node of a Redis Cluster: refused (its other shards'
        channels would fail with MOVED), naming the URL that works."""
        try:
            info: Any = await self._redis.info("cluster")
        except _REDIS_ERRORS:
            return  # unreachable now (the listener keeps trying), or no INFO cluster
        if str(info.get("cluster_enabled", 0)) == "1":
            raise ValueError(
                f"HUB_REDIS_URL names a node of a Redis Cluster ({self._target.where}): use"
                " redis+cluster://host:port (one node is enough; the rest of the cluster is discovered)"
            )

    @property
    def outage_seconds(self) -> float:
        """Seconds this process has been without Redis since start (a current outage included)."""
        down = self._down_since
        return self._outage + (time.monotonic() - down if down is not None else 0.0)

    def _on_lost(self, topics: Collection[bytes] | None = None) -> None:
        self._up = False
        # A cluster's shard: its channels' rings miss what it announces until they are refilled.
        for t in topics or ():
            sub = self._by_topic.get(t)
            if sub is not None:
                sub.refilling = True
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._lost_log.hit("lost the Redis pub/sub connection; reconnecting")

    async def _refill(self, sub: _Sub) -> None:
        if sub.base is None:  # its subscribe() is still running and will fail or set it
            sub.refilling = False
            return
        start = sub.position
        read = await self._read_stream(sub.name, start)
        sub.refilling = False
        if self._subs.get(sub.name) is not sub:
            return
        if read.lost:
            # The cut outlasted the stream's length: the streams of this channel
            # are told (hub.gap, as a resuming client would be), then get what is left.
            log.warning("events of %s published during the cut were trimmed before the refill", sub.name)
        self._apply(sub, start, read)
        self._after_read(sub)

    # -- live path ----------------------------------------------------------

    def _on_message(self, channel_topic: bytes, raw: bytes) -> None:
        self.messages_received += 1
        sub = self._by_topic.get(channel_topic)
        if sub is None:
            return  # unsubscribed meanwhile
        try:
            decoded = decode_message(sub.name, raw, self.limits)
        except Invalid as exc:
            self._invalid(sub.name, exc.reason)
            if exc.announcement:  # whatever it claims, the stream says what is new
                self._want(sub, ZERO)
            return
        if decoded.announced is not None:
            self._want(sub, decoded.announced)
            return
        if sub.reading:
            sub.queued.extend(decoded.events)
            return
        for event in decoded.events:
            self._accept(sub, event)

    def _want(self, sub: _Sub, announced: Key) -> None:
        """A publish was announced: read the stream after ``sub.position``."""
        if announced != ZERO and announced <= sub.position:
            return  # already read (an earlier read saw it in the stream)
        sub.want = announced if sub.want is None else max(sub.want, announced)
        self._due[sub] = None
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_due(), name="redis-stream-reader")

    def _after_read(self, sub: _Sub) -> None:
        """After subscribe() or a refill: read if an announcement came meanwhile, else
        deliver the raw events held."""
        if sub.want is not None and sub.want != ZERO and sub.want <= sub.position:
            sub.want = None
        if sub.want is not None:
            self._want(sub, sub.want)
        elif not sub.reading:
            self._flush_queued(sub)

    def _take_due(self) -> list[_Sub]:
        subs: list[_Sub] = []
        for sub in list(self._due):
            del self._due[sub]
            if self._subs.get(sub.name) is not sub or sub.want is None:
                continue
            if sub.base is None or sub.refilling:
                continue  # subscribe() or the refill reads it, then calls _after_read
            subs.append(sub)
            if len(subs) == _READ_BATCH:
                break
        return subs

    async def _read_due(self) -> None:
        """The reader: read the streams of the channels announced, until none is due."""
        failures = 0
        while self._due:
            subs = self._take_due()
            if not subs:
                continue
            announced: dict[_Sub, Key] = {}
            starts: dict[_Sub, Key] = {}
            for sub in subs:
                announced[sub] = sub.want or ZERO
                starts[sub] = sub.position
                sub.want = None
                sub.busy = True
            again = False
            try:
                reads = await self._read_many(starts)
            except _REDIS_ERRORS as exc:
                self._error_log.hit("reading %d streams failed: %s", len(subs), exc)
                reads, again = {}, True
            finally:
                for sub in subs:
                    sub.busy = False
            for sub in subs:
                if self._subs.get(sub.name) is not sub:
                    continue
                read = reads.get(sub)
                if read is None:
                    if again:  # Redis failed: read it again
                        sub.want = announced[sub] if sub.want is None else max(sub.want, announced[sub])
                    elif not sub.reading:  # refused (logged): the next announcement tries again
                        self._flush_queued(sub)
                    continue
                if read.lost and self._expired_while_idle(starts[sub], read):
                    read.lost = False
                try:
                    self._apply(sub, starts[sub], read)
                except Exception as exc:  # a bug: the other channels must still be served
                    log.debug("delivering the stream of %s failed", sub.name, exc_info=True)
                    self._error_log.hit("delivering the stream of %s failed: %r", sub.name, exc)
                if announced[sub] > sub.position:
                    # Announced, yet not in the stream: not the publish script's doing.
                    self._invalid(
                        sub.name, f"announced id {format_id(announced[sub])} that the stream does not hold"
                    )
                if not sub.reading:
                    self._flush_queued(sub)
            if again:
                if not self._listener.connected and not self._tagged:
                    return  # the refill after the reconnect reads them
                failures += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                for sub in subs:
                    if sub.want is not None and self._subs.get(sub.name) is sub:
                        self._due[sub] = None
            else:
                failures = 0

    def _expired_while_idle(self, start: Key, read: StreamRead) -> bool:
        """Whether a stream read live after ``start`` is new only because the old one
        expired while the channel was idle: nothing was lost then.

        This process heard every publish since ``start`` (a cut of the pub/sub
        connection goes through a refill instead) and read each at once, so the
        old stream held nothing it did not deliver, if it lived on for the TTL
        after its last entry: the new stream's first entry is a TTL or more after
        ``start``, and nothing ever left the new one.
        """
        first = read.first
        return bool(self.ttl_ms and read.renewed and first is not None and first[0] - start[0] >= self.ttl_ms)

    def _flush_queued(self, sub: _Sub) -> None:
        queued, sub.queued = sub.queued, []
        for event in queued:
            self._accept(sub, event)

    async def _read_many(self, starts: Mapping[_Sub, Key]) -> dict[_Sub, StreamRead]:
        """The streams of several channels after their positions, in one round trip.

        One ``XREAD`` from just before each position: when the entry at the
        position itself comes back, nothing after it was trimmed. Otherwise (the
        channel's first read, or entries trimmed) that channel's stream is read
        with gap detection. A channel whose read fails is left out.
        """
        reads: dict[_Sub, StreamRead] = {}
        known = {sub: start for sub, start in starts.items() if start != ZERO}
        if known:
            # One XREAD; on a cluster one per slot (an XREAD's keys must share one), together.
            groups: dict[int, dict[str, str]] = {}
            for sub, start in known.items():
                slot = key_slot(sub.stream.encode()) if self._tagged else 0
                groups.setdefault(slot, {})[sub.stream] = format_id(_before(start))
            replies = await self._xread(list(groups.values()))
            found = {
                (name.decode() if isinstance(name, bytes) else name): entries
                for reply in replies
                for name, entries in reply
            }
            for sub, start in known.items():
                entries = found.get(sub.stream)
                if entries and parse_key(entries[0][0]) == start:
                    events, skipped = read_entries(sub.name, entries[1:], self.limits)
                    reads[sub] = StreamRead(events, skipped, False, None, parse_key(entries[-1][0]))
        for sub, start in starts.items():
            if sub not in reads:
                try:
                    reads[sub] = await self._read_stream(sub.name, start)
                except ResponseError as exc:  # e.g. WRONGTYPE: this channel only
                    self._error_log.hit("reading the stream of %s failed: %s", sub.name, exc)
        return reads

    async def _xread(self, groups: list[dict[str, str]]) -> list[Any]:
        """XREAD replies for groups of streams (stream -> read after this id).

        One server: one XREAD. A cluster: an exclusive XRANGE per stream, all in one
        pipeline (one round trip per node): redis-py would ask the node for the keys of
        every XREAD first (its keys are "movable"), a round trip each. A stream Redis
        refuses (a key of the wrong type) reads as nothing: it is then read on its own.
        """
        if not self._tagged:
            try:
                return [await self._redis.xread(groups[0])]  # type: ignore[arg-type]
            except ResponseError:
                return [[]]
        pipe: Any = self._redis.pipeline(transaction=False)
        order: list[str] = []
        for group in groups:
            for stream, after in group.items():
                pipe.xrange(stream, min=f"({after}", max="+")
                order.append(stream)
        async with self._slot():
            replies = await pipe.execute(raise_on_error=False)
        found: list[Any] = []
        for stream, reply in zip(order, replies, strict=True):
            if isinstance(reply, ResponseError):
                continue
            if isinstance(reply, Exception):
                raise reply
            if reply:
                found.append([(stream, reply)])
        return found

    def _apply(self, sub: _Sub, start: Key, read: StreamRead) -> None:
        """Deliver a read of the stream after ``start``: its events in id order,
        a hub.gap where anything was lost (trimmed, or skipped as invalid)."""
        if read.lost and start == sub.position:
            oldest = read.events[0].id if read.events else (format_id(read.first) if read.first else None)
            self._gap(sub, format_id(start), oldest)
        skipped = iter(read.skipped)
        bad = next(skipped, None)
        lost_from: str | None = None
        for event in read.events:
            key = event.key
            assert key is not None
            while bad is not None and bad[0] < key:
                if bad[0] > sub.last:
                    self._invalid(sub.name, f"stream entry {format_id(bad[0])}: {bad[1]}")
                    lost_from = lost_from or format_id(sub.position)
                    sub.last = sub.skipped = bad[0]
                bad = next(skipped, None)
            if lost_from is not None and key > sub.last:
                self._gap(sub, lost_from, event.id)
                lost_from = None
            self._accept(sub, event)
        while bad is not None:
            if bad[0] > sub.last:
                self._invalid(sub.name, f"stream entry {format_id(bad[0])}: {bad[1]}")
                lost_from = lost_from or format_id(sub.position)
                sub.last = sub.skipped = bad[0]
            bad = next(skipped, None)
        if lost_from is not None:
            self._gap(sub, lost_from, None)

    def _gap(self, sub: _Sub, requested: str, oldest: str | None) -> None:
        if self._deliver is not None:
            self._deliver(Event.gap(sub.name, requested, oldest))

    def _accept(self, sub: _Sub, event: Event) -> None:
        key = event.key
        if key is not None:
            if key <= sub.last:
                return  # already delivered (live and refill overlap)
            sub.last = key
            sub.ring.append(event)
        if self._deliver is not None:
            self._deliver(event)

    def _invalid(self, channel: str, reason: str) -> None:
        self.invalid_messages += 1
        self._invalid_log.hit("dropped invalid input from Redis on channel %s: %s", channel, reason)

    # -- errors -------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException, channel: str | None = None) -> NoReturn:
        """Log what Redis said (rate-limited), raise what a client may read."""
        self._error_log.hit("%s: %s: %s", what, type(exc).__name__, exc)
        raise BrokerUnavailable(f"{what}: {_explain(exc, channel)}") from exc

    # -- the Broker interface -----------------------------------------------

    async def publish(
        self, channel: str, payloads: Sequence[Payload], idempotency_key: str | None = None
    ) -> list[str]:
        key = stream_key(self.prefix, channel, self._tagged)
        args = script_args(
            self.history_size,
            payloads,
            self.limits.max_event_bytes,
            self.ttl_ms,
            idempotency_key,
            self.idempotency_ms,
        )
        # A call whose connection failed may have run or not: sent again with its
        # idempotency key it returns the first run's ids, so only such calls are retried
        # (once, on a new connection); without a key the client is told (503).
        attempts = 2 if idempotency_key is not None else 1
        for attempt in range(attempts):
            try:
                ids = await self._publishes.call([key], args)
                break
            except ResponseError as exc:
                message = _SCRIPT_DETAIL.sub("", str(exc))
                if message.startswith("ssehub: idempotency key reused"):
                    raise idempotency_conflict() from exc
                if message.startswith("ssehub: "):  # the script refused the events themselves
                    raise InputError(400, "bad_request", f"refused by Redis: {message[8:]}") from exc
                self._fail(f"publish to {channel} failed", exc, channel)
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
                if attempt + 1 < attempts:
                    log.info("publish to %s: %s; sending it again with its idempotency key", channel, exc)
                    continue
                self._fail(f"publish to {channel} failed", exc, channel)
            except _REDIS_ERRORS as exc:
                self._fail(f"publish to {channel} failed", exc, channel)
        return script_ids(ids)

    async def subscribe(self, channel: str) -> None:
        if not self._listener.connected:
            raise BrokerUnavailable("Redis is not connected")
        sub = _Sub(channel, self.prefix, self.history_size, self._tagged)
        self._subs[channel] = sub
        self._by_topic[sub.topic] = sub
        try:
            await self._listener.subscribe([sub.topic])
            sub.base = await self._newest(sub.stream)
        except _REDIS_ERRORS as exc:
            self._forget(sub)
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._listener.unsubscribe([sub.topic])
            self._fail(f"could not subscribe to {channel}", exc, channel)
        self._after_read(sub)

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        self._forget(sub)
        # A dead connection took its subscriptions with it; the next one will not have this one.
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._listener.unsubscribe([sub.topic])

    def _forget(self, sub: _Sub) -> None:
        if self._subs.get(sub.name) is sub:
            del self._subs[sub.name]
        if self._by_topic.get(sub.topic) is sub:
            del self._by_topic[sub.topic]
        self._due.pop(sub, None)
        sub.queued.clear()

    def _current(self, channel: str) -> _Sub | None:
        """The channel's subscription when its ring and ``last`` are complete."""
        sub = self._subs.get(channel)
        if sub is None or not self.ready or sub.refilling or sub.base is None:
            return None
        return sub

    def _horizon(self) -> Key | None:
        """The oldest id history still replays (by the TTL); None without one."""
        if not self.ttl_ms:
            return None
        return (max(0, time.time_ns() // 1_000_000 - self.ttl_ms), 0)

    async def history(self, channel: str, after: Key | None, limit: int | None = None) -> History:
        sub = self._current(channel)
        horizon = self._horizon()
        # The ring answers from its start on, and up to what this process heard: a
        # cursor ahead of that (seen on another node, still on its way here) asks Redis,
        # and so does one before an entry skipped as invalid (the client is told), and
        # one about as old as the TTL or older (Redis trims, or dropped the stream).
        if sub is not None and sub.base is not None and after is not None and addressable(after):
            newest = sub.position
            if (
                sub.base <= after <= newest
                and sub.ring.covers(after)
                and (sub.skipped is None or after >= sub.skipped)
                and (horizon is None or after[0] >= horizon[0] + _CLOCK_SLACK_MS)
            ):
                first = sub.ring.first
                history = History(gap=False, oldest=first.id if first is not None else None, last=newest)
                sub.ring.fill(history, after, limit)
                return history
        try:
            read = await self._read_stream(channel, after, limit, horizon)
        except _REDIS_ERRORS as exc:
            self._fail("history read failed", exc, channel)
        for key, reason in read.skipped:
            self._invalid(channel, f"stream entry {format_id(key)}: {reason}")
        return read.history()

    async def _read_stream(
        self, channel: str, after: Key | None, limit: int | None = None, horizon: Key | None = None
    ) -> StreamRead:
        """The stream after ``after``, with gap detection; from ``horizon`` on, when given.

        A cursor Redis cannot read from (a part past 2**64-1, or the largest id)
        or one past the stream's newest id is one this stream never handed out:
        as a malformed one, it gets everything kept, and a gap.
        """
        start = after if after is None or addressable(after) else None
        read = await self._xrange(channel, start, limit, horizon)
        if after is not None and (start is None or after > read.last):
            if start is not None:
                read = await self._xrange(channel, None, limit, horizon)
            read.lost = True
        return read

    async def _xrange(
        self, channel: str, after: Key | None, limit: int | None = None, horizon: Key | None = None
    ) -> StreamRead:
        """``XINFO STREAM`` and ``XRANGE (after +``, in one transaction.

        With a ``horizon`` (the TTL's) past the cursor, the range starts at the
        horizon instead: older entries, kept until the next publish trims them,
        are not replayed, and when there are any after the cursor it is a loss.
        """
        stream = stream_key(self.prefix, channel, self._tagged)
        aged = horizon is not None and (after is None or after < horizon)
        if aged:
            assert horizon is not None
            start = format_id(horizon)
        else:
            start = "-" if after is None else f"({format_id(after)}"
        async with self._slot(), self._redis.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xrange(stream, min=start, max="+", count=None if limit is None else limit + 1)
            if aged and after is not None:
                assert horizon is not None
                pipe.xrange(stream, min=f"({format_id(after)}", max=format_id(_before(horizon)), count=1)
            info, entries, *rest = await pipe.execute(raise_on_error=False)
        if isinstance(info, ResponseError) and "no such key" not in str(info):
            raise info  # WRONGTYPE and the like: not an empty stream
        more = None
        if limit is not None and isinstance(entries, list) and len(entries) > limit:
            del entries[limit:]
            # The next page starts after the last entry read, valid or skipped.
            more = parse_key(entries[-1][0])
        read = read_stream(channel, after, info, entries, self.limits)
        read.more = more
        if aged:
            # What is replayed starts at the first entry younger than the TTL.
            read.first = parse_key(entries[0][0]) if entries else None
            for older in rest:  # entries after the cursor, older than the TTL: not replayed
                if isinstance(older, Exception):
                    raise older
                read.lost = read.lost or bool(older)
        return read

    async def last_key(self, channel: str) -> Key:
        sub = self._current(channel)
        if sub is not None and sub.base is not None:
            return sub.position
        try:
            return await self._newest(stream_key(self.prefix, channel, self._tagged))
        except _REDIS_ERRORS as exc:
            self._fail("reading the newest id failed", exc, channel)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of the cluster client's ``pool_size`` command slots (one Redis: nothing to
        take, its pool waits by itself); TimeoutError past the command timeout."""
        slots = self._slots
        if slots is None:
            yield
            return
        async with asyncio.timeout(self._command_timeout):
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def _newest(self, stream: str) -> Key:
        async with self._slot():
            entries: Any = await self._redis.xrevrange(stream, max="+", min="-", count=1)
        return parse_key(entries[0][0]) if entries else ZERO

    def channel_names(self) -> Collection[str]:
        """The channels this process is subscribed to (it caches their recent history)."""
        return self._subs.keys()

    def channel_stats(self, name: str) -> ChannelStats | None:
        sub = self._subs.get(name)
        if sub is None:
            return None
        last = sub.ring.last
        return ChannelStats(last.id if last is not None else None, len(sub.ring))


def _explain(exc: BaseException, channel: str | None) -> str:
    """A Redis failure in words a client may read: what is wrong and who fixes it."""
    if isinstance(exc, ResponseError):
        code = str(exc).split(" ", 1)[0]
        if code == "WRONGTYPE":
            where = f"channel {channel!r}" if channel is not None else "this channel"
            return (
                f"a Redis key of {where} holds another type of value than the hub's"
                " (WRONGTYPE); an operator must delete or rename it"
            )
        return _REFUSALS.get(code, "Redis refused the command")
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "Redis did not answer in time"
    if isinstance(exc, RedisConnectionError | OSError):
        return "Redis is unreachable"
    return "Redis failed"


def _before(key: Key) -> Key:
    """The id just before ``key`` (not ZERO), for an ``XREAD`` that returns ``key`` itself."""
    ms, seq = key
    return (ms, seq - 1) if seq else (ms - 1, _U64)
