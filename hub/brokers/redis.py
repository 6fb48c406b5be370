"""The Redis broker: many hub processes and nodes behave as one hub.

- Ids and history live in one Redis stream per channel; a publish is one
  call of ``publish.lua``, which ``XADD``s and ``PUBLISH``es an envelope with
  the new ids atomically, so live delivery and history agree everywhere.
- Each process holds one pub/sub connection (:mod:`hub.brokers.redis_listener`)
  for the channels with local subscribers, and a bounded pool of command
  connections: a burst of commands waits for one (up to ``command_timeout``)
  instead of failing. Concurrent publishes share round trips
  (:mod:`hub.brokers.redis_batch`).
- Per subscribed channel, a :class:`ReplayRing` keeps what this process saw
  live, so most resumes need no round trip; older cursors read the stream.
- When the pub/sub connection comes back after a cut, every subscribed
  channel is re-subscribed and refilled from the stream after the last id
  this process delivered; live messages are held meanwhile, so the hub gets
  every event once, in id order.

Redis errors never leave this module raw: callers get :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hub.brokers.base import Broker, BrokerUnavailable, ChannelStats, Deliver
from hub.brokers.redis_batch import ScriptBatcher
from hub.brokers.redis_codec import (
    SCRIPT,
    decode_message,
    history_from,
    parse_key,
    script_args,
    stream_key,
    topic,
)
from hub.brokers.redis_listener import PubSubListener
from hub.core.event import Event, Payload
from hub.core.ids import ZERO, Key, format_id
from hub.core.ring import History, ReplayRing

log = logging.getLogger(__name__)


class _Sub:
    """A channel this process is subscribed to."""

    __slots__ = ("base", "held", "last", "name", "ring", "stream", "topic")

    def __init__(self, name: str, prefix: str, capacity: int) -> None:
        self.name = name
        self.topic = topic(prefix, name).encode()
        self.stream = stream_key(prefix, name)
        self.ring = ReplayRing(capacity)
        # The ring holds every event after ``base`` (the newest id when the
        # subscription started); None until then.
        self.base: Key | None = None
        # The newest id delivered to the hub.
        self.last: Key = ZERO
        # Live events kept aside while the channel is refilled after a cut.
        self.held: list[Event] | None = None


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"{what}: {exc}") from exc


class RedisBroker(Broker):
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        pool_size: int = 32,
        command_timeout: float = 5.0,
        ping_seconds: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        connection_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.prefix = prefix
        self.history_size = history_size
        extra = dict(connection_kwargs or {})
        # RESP2 for both: the reply shapes parsed here do not depend on redis-py's default.
        options = {
            "socket_timeout": command_timeout,
            "socket_connect_timeout": command_timeout,
            "protocol": 2,
        }
        # One retry: a pooled connection may have died with a Redis restart.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=command_timeout,
            retry=Retry(NoBackoff(), 1),
            client_name="ssehub",
            **options,
            **extra,
        )
        self._redis = Redis(connection_pool=self._pool)
        self._publishes = ScriptBatcher(self._redis, self._redis.register_script(SCRIPT))
        # Only a factory of pub/sub connections: the listener never pools them.
        self._pubsub_pool = ConnectionPool.from_url(
            url, retry=Retry(NoBackoff(), 0), client_name="ssehub-pubsub", **options, **extra
        )
        self._listener = PubSubListener(
            self._pubsub_pool.make_connection,
            self._on_message,
            self._on_connected,
            self._on_lost,
            ping_seconds=ping_seconds,
            confirm_seconds=command_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._subs: dict[str, _Sub] = {}
        self._by_topic: dict[bytes, _Sub] = {}
        self._deliver: Deliver | None = None
        self._up = False

    # -- life cycle ---------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        await self._listener.start()
        if not self._up:
            log.error("Redis is unreachable; retrying in the background (not ready meanwhile)")

    async def stop(self) -> None:
        await self._listener.stop()
        self._up = False
        await self._publishes.close()
        await self._redis.aclose()
        await self._pool.disconnect()
        self._deliver = None

    @property
    def ready(self) -> bool:
        return self._up

    async def _on_connected(self) -> None:
        """Re-subscribe everything, then refill each channel from its stream."""
        subs = list(self._subs.values())
        for sub in subs:
            sub.held = []
        await self._listener.subscribe(sub.topic for sub in subs)
        for sub in subs:
            if self._subs.get(sub.name) is sub:
                await self._refill(sub)
        self._up = True
        if subs:
            log.info("Redis is back: re-subscribed and refilled %d channels", len(subs))

    def _on_lost(self) -> None:
        self._up = False
        log.warning("lost the Redis pub/sub connection; reconnecting")

    async def _refill(self, sub: _Sub) -> None:
        if sub.base is None:  # its subscribe() is still running and will fail or set it
            sub.held = None
            return
        start = max(sub.last, sub.base)
        missed = await self._read_history(sub.name, start)
        held, sub.held = sub.held or [], None
        if missed.gap:
            # The cut outlasted the stream's length: the streams of this channel
            # are told (hub.gap, as a resuming client would be), then get what is left.
            log.warning("events of %s published during the cut were trimmed before the refill", sub.name)
            if self._deliver is not None:
                self._deliver(Event.gap(sub.name, format_id(start), missed.oldest))
        for event in missed.events:
            self._accept(sub, event)
        for event in held:
            self._accept(sub, event)

    # -- live path ----------------------------------------------------------

    def _on_message(self, channel_topic: bytes, raw: bytes) -> None:
        sub = self._by_topic.get(channel_topic)
        if sub is None:
            return  # unsubscribed meanwhile
        events = decode_message(sub.name, raw)
        if sub.held is not None:
            sub.held.extend(events)
            return
        for event in events:
            self._accept(sub, event)

    def _accept(self, sub: _Sub, event: Event) -> None:
        key = event.key
        if key is not None:
            if key <= sub.last:
                return  # already delivered (live and refill overlap)
            sub.last = key
            sub.ring.append(event)
        if self._deliver is not None:
            self._deliver(event)

    # -- the Broker interface -----------------------------------------------

    async def publish(self, channel: str, payloads: Sequence[Payload]) -> list[str]:
        with _unavailable("publish failed"):
            ids = await self._publishes.call(
                [stream_key(self.prefix, channel)], script_args(self.history_size, payloads)
            )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def subscribe(self, channel: str) -> None:
        if not self._listener.connected:
            raise BrokerUnavailable("Redis is not connected")
        sub = _Sub(channel, self.prefix, self.history_size)
        self._subs[channel] = sub
        self._by_topic[sub.topic] = sub
        try:
            await self._listener.subscribe([sub.topic])
            sub.base = await self._newest(sub.stream)
        except (RedisError, OSError, TimeoutError) as exc:
            self._forget(sub)
            with contextlib.suppress(RedisError, OSError):
                await self._listener.unsubscribe([sub.topic])
            raise BrokerUnavailable(f"could not subscribe to {channel}: {exc}") from exc

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        self._forget(sub)
        # A dead connection took its subscriptions with it; the next one will not have this one.
        with contextlib.suppress(RedisError, OSError):
            await self._listener.unsubscribe([sub.topic])

    def _forget(self, sub: _Sub) -> None:
        if self._subs.get(sub.name) is sub:
            del self._subs[sub.name]
        if self._by_topic.get(sub.topic) is sub:
            del self._by_topic[sub.topic]

    def _current(self, channel: str) -> _Sub | None:
        """The channel's subscription when its ring and ``last`` are complete."""
        sub = self._subs.get(channel)
        if sub is None or not self._up or sub.held is not None or sub.base is None:
            return None
        return sub

    async def history(self, channel: str, after: Key | None) -> History:
        sub = self._current(channel)
        # The ring answers from its start on, and up to what this process heard: a
        # cursor ahead of that (seen on another node, still on its way here) asks Redis.
        if sub is not None and sub.base is not None and after is not None:
            newest = max(sub.last, sub.base)
            if sub.base <= after <= newest and sub.ring.covers(after):
                first = sub.ring.first
                oldest = first.id if first is not None else None
                return History(sub.ring.after(after), gap=False, oldest=oldest, last=newest)
        with _unavailable("history read failed"):
            return await self._read_history(channel, after)

    async def _read_history(self, channel: str, after: Key | None) -> History:
        stream = stream_key(self.prefix, channel)
        start = "-" if after is None else f"({format_id(after)}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(stream)
            pipe.xrange(stream, min=start, max="+")
            info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(entries, Exception):
            raise entries
        return history_from(channel, after, info, entries)

    async def last_key(self, channel: str) -> Key:
        sub = self._current(channel)
        if sub is not None and sub.base is not None:
            return max(sub.last, sub.base)
        with _unavailable("reading the newest id failed"):
            return await self._newest(stream_key(self.prefix, channel))

    async def _newest(self, stream: str) -> Key:
        entries: Any = await self._redis.xrevrange(stream, max="+", min="-", count=1)
        return parse_key(entries[0][0]) if entries else ZERO

    def stats(self) -> dict[str, ChannelStats]:
        out = {}
        for name, sub in self._subs.items():
            last = sub.ring.last
            out[name] = ChannelStats(last.id if last is not None else None, len(sub.ring))
        return out
