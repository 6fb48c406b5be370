"""Publish to ssehub channels straight through Redis, without an HTTP hop.

For services that already hold a Redis connection (workers, cron jobs): the
event goes through the same script a hub node runs, so it gets a stream id,
is kept for replay and reaches every node's subscribers, exactly as if it had
been POSTed::

    import redis
    from hub.publisher import Publisher

    hub = Publisher(redis.Redis.from_url("redis://localhost:6379/0"))
    event_id = hub.publish("orders", {"id": 42, "status": "paid"}, event="order")

:class:`AsyncPublisher` does the same with ``redis.asyncio``. Use the hub's
``HUB_REDIS_PREFIX``, ``HUB_HISTORY_SIZE`` and ``HUB_HISTORY_TTL`` as ``prefix``,
``history_size`` and ``history_ttl`` (seconds; 0: no age limit), and its
``HUB_MAX_EVENT_BYTES`` and ``HUB_MAX_BODY_BYTES`` as ``limits``: events are
checked as the HTTP API checks a publish (hub nodes skip stream entries that it
would refuse), and the script refuses larger data too. Each publish drops the
channel's events older than ``history_ttl`` and sets its stream to expire that
long after it, as a hub node's publish does.

On a Redis Cluster pass a ``RedisCluster`` client (``redis.cluster`` or
``redis.asyncio.cluster``): the publisher then uses the cluster's key layout,
as a hub node on ``redis+cluster://`` does.

A publish may carry an ``idempotency_key``: sent again with the same key (a
retry after a lost reply, say) it stores nothing and returns the first call's
ids, for ``idempotency_seconds`` (the hub's HUB_IDEMPOTENCY_SECONDS, 300), so
redis-py's own retries are safe too::

    event_id = hub.publish("orders", {"id": 42}, idempotency_key="order-42-paid")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from hub.brokers.redis_codec import (
    DEFAULT_LIMITS,
    DEFAULT_TTL_SECONDS,
    SCRIPT,
    check_prefix,
    script_args,
    script_ids,
    stream_key,
    ttl_ms,
)
from hub.core.event import Payload
from hub.inputs import MAX_BATCH, InputError, Limits, check_channel, check_idempotency_key, check_payload


@dataclass(frozen=True, slots=True)
class Message:
    """One event to publish: ``data`` is any JSON value, or a str when ``text``."""

    data: Any
    event: str | None = None
    retry: int | None = None
    text: bool = False


def to_payload(message: Message, limits: Limits = DEFAULT_LIMITS) -> Payload:
    """Checked as the HTTP API checks: :class:`hub.inputs.InputError` or ValueError when invalid."""
    if message.text:
        if not isinstance(message.data, str) or not message.data:
            raise ValueError("a text event's data is a non-empty str")
        return check_payload("text", message.data, message.event, message.retry, limits)
    return check_payload("json", orjson.dumps(message.data), message.event, message.retry, limits)


class _Base:
    def __init__(
        self,
        prefix: str,
        history_size: int,
        history_ttl: float,
        limits: Limits | None,
        idempotency_seconds: float = 300.0,
        tagged: bool = False,
    ) -> None:
        # A Redis Cluster client: the cluster's key layout (hub:{channel}:log, SPUBLISH).
        self.tagged = tagged
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if not 1 <= idempotency_seconds <= 7 * 86400:
            raise ValueError("idempotency_seconds is 1 to 604800 (7 days)")
        self.idempotency_ms = round(idempotency_seconds * 1000)
        self.prefix = check_prefix(prefix)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.ttl_ms = ttl_ms(history_ttl)
        self.limits = limits or DEFAULT_LIMITS

    def _call(
        self, channel: str, messages: Sequence[Message], idempotency_key: str | None = None
    ) -> tuple[list[str], list[str | int]]:
        check_channel(channel)
        check_idempotency_key(idempotency_key)
        if not messages:
            raise ValueError("nothing to publish")
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} events per call, as in an HTTP batch")
        payloads = [to_payload(m, self.limits) for m in messages]
        size = sum(p.wire_size for p in payloads)
        if size > self.limits.max_body_bytes:
            raise InputError(
                413,
                "body_too_large",
                f"the events hold {size} bytes of data, over the body limit of {self.limits.max_body_bytes}",
            )
        args = script_args(
            self.history_size,
            payloads,
            self.limits.max_event_bytes,
            self.ttl_ms,
            idempotency_key,
            self.idempotency_ms,
        )
        return [stream_key(self.prefix, channel, self.tagged)], args


class Publisher(_Base):
    """Publishes with a synchronous ``redis.Redis`` client."""

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        history_ttl: float = DEFAULT_TTL_SECONDS,
        limits: Limits | None = None,
        idempotency_seconds: float = 300.0,
    ) -> None:
        super().__init__(
            prefix,
            history_size,
            history_ttl,
            limits,
            idempotency_seconds,
            isinstance(client, redis.cluster.RedisCluster),
        )
        self._script = client.register_script(SCRIPT)

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        retry: int | None = None,
        text: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish one event; returns its id."""
        return self.publish_many(channel, [Message(data, event, retry, text)], idempotency_key)[0]

    def publish_many(
        self, channel: str, messages: Sequence[Message], idempotency_key: str | None = None
    ) -> list[str]:
        """Publish a batch atomically, in order; returns the ids (with the key of an
        earlier call on this channel: that call's ids, nothing stored again)."""
        keys, args = self._call(channel, messages, idempotency_key)
        return script_ids(self._script(keys=keys, args=args))


class AsyncPublisher(_Base):
    """Publishes with a ``redis.asyncio.Redis`` client."""

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        history_ttl: float = DEFAULT_TTL_SECONDS,
        limits: Limits | None = None,
        idempotency_seconds: float = 300.0,
    ) -> None:
        super().__init__(
            prefix,
            history_size,
            history_ttl,
            limits,
            idempotency_seconds,
            isinstance(client, redis.asyncio.cluster.RedisCluster),
        )
        self._script = client.register_script(SCRIPT)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        retry: int | None = None,
        text: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish one event; returns its id."""
        return (await self.publish_many(channel, [Message(data, event, retry, text)], idempotency_key))[0]

    async def publish_many(
        self, channel: str, messages: Sequence[Message], idempotency_key: str | None = None
    ) -> list[str]:
        """Publish a batch atomically, in order; returns the ids (with the key of an
        earlier call on this channel: that call's ids, nothing stored again)."""
        keys, args = self._call(channel, messages, idempotency_key)
        return script_ids(await self._script(keys=keys, args=args))
