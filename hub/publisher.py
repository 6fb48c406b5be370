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
``HUB_REDIS_PREFIX`` and ``HUB_HISTORY_SIZE`` as ``prefix`` and ``history_size``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from hub.brokers.redis_codec import SCRIPT, script_args, stream_key
from hub.core.event import Payload
from hub.inputs import check_channel, check_event_type, check_retry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One event to publish: ``data`` is any JSON value, or a str when ``text``."""

    data: Any
    event: str | None = None
    retry: int | None = None
    text: bool = False


def to_payload(message: Message) -> Payload:
    """Checked as the HTTP API checks: :class:`hub.inputs.InputError` or ValueError when invalid."""
    event = check_event_type(message.event)
    retry = check_retry(message.retry)
    if message.text:
        if not isinstance(message.data, str) or not message.data:
            raise ValueError("a text event's data is a non-empty str")
        return Payload("text", message.data, event, retry)
    return Payload("json", orjson.dumps(message.data).decode(), event, retry)


class _Base:
    def __init__(self, prefix: str, history_size: int) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.prefix = prefix
        self.history_size = history_size

    def _call(self, channel: str, messages: Sequence[Message]) -> tuple[list[str], list[str | int]]:
        check_channel(channel)
        if not messages:
            raise ValueError("nothing to publish")
        payloads = [to_payload(m) for m in messages]
        return [stream_key(self.prefix, channel)], script_args(self.history_size, payloads)


def _ids(reply: Any) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in reply]


class Publisher(_Base):
    """Publishes with a synchronous ``redis.Redis`` client."""

    def __init__(self, client: redis.Redis, *, prefix: str = "hub", history_size: int = 1000) -> None:
        super().__init__(prefix, history_size)
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

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "hub", history_size: int = 1000) -> None:
        super().__init__(prefix, history_size)
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
