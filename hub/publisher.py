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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from hub.brokers.redis_codec import (
    DEFAULT_LIMITS,
    DEFAULT_TTL_SECONDS,
    SCRIPT,
    check_prefix,
    script_args,
    stream_key,
    ttl_ms,
)
from hub.core.event import Payload
from hub.inputs import MAX_BATCH, InputError, Limits, check_channel, check_payload


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
    def __init__(self, prefix: str, history_size: int, history_ttl: float, limits: Limits | None) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.prefix = check_prefix(prefix)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.ttl_ms = ttl_ms(history_ttl)
        self.limits = limits or DEFAULT_LIMITS

    def _call(self, channel: str, messages: Sequence[Message]) -> tuple[list[str], list[str | int]]:
        check_channel(channel)
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
        args = script_args(self.history_size, payloads, self.limits.max_event_bytes, self.ttl_ms)
        return [stream_key(self.prefix, channel)], args


def _ids(reply: Any) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in reply]


class Publisher(_Base):
    """Publishes with a synchronous ``redis.Redis`` client."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        history_ttl: float = DEFAULT_TTL_SECONDS,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(prefix, history_size, history_ttl, limits)
        self._script = client.register_script(SCRIPT)

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        retry: int | None = None,
        text: bool = False,
    ) -> str:
        """Publish one event; returns its id."""
        return self.publish_many(channel, [Message(data, event, retry, text)])[0]

    def publish_many(self, channel: str, messages: Sequence[Message]) -> list[str]:
        """Publish a batch atomically, in order; returns the ids."""
        keys, args = self._call(channel, messages)
        return _ids(self._script(keys=keys, args=args))


class AsyncPublisher(_Base):
    """Publishes with a ``redis.asyncio.Redis`` client."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "hub",
        history_size: int = 1000,
        history_ttl: float = DEFAULT_TTL_SECONDS,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(prefix, history_size, history_ttl, limits)
        self._script = client.register_script(SCRIPT)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        retry: int | None = None,
        text: bool = False,
    ) -> str:
        """Publish one event; returns its id."""
        return (await self.publish_many(channel, [Message(data, event, retry, text)]))[0]

    async def publish_many(self, channel: str, messages: Sequence[Message]) -> list[str]:
        """Publish a batch atomically, in order; returns the ids."""
        keys, args = self._call(channel, messages)
        return _ids(await self._script(keys=keys, args=args))
