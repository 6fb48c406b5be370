"""The broker port: what the fan-out core needs from a broker, owned by the core.

Brokers (:mod:`hub.brokers.memory`, :mod:`hub.brokers.redis`) implement it;
the composition root (:func:`hub.http.app.broker_for`) picks one by URL.

A broker is where events are published, numbered, kept and heard.

A broker gives every published event its id, keeps each channel's history,
and tells the process about events of the channels it has subscribed to,
by calling ``deliver`` once per event, in id order per channel. The fan-out
core (:class:`hub.core.hub.Hub`) does the rest.

``deliver`` is a plain callback rather than an async iterator: the memory
broker calls it inside ``publish`` and the Redis broker from its one listener
task, and neither pays a queue hop per event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hub.core.event import Event, Payload
from hub.core.ids import Key
from hub.core.ring import History

Deliver = Callable[[Event], None]


class BrokerUnavailable(Exception):
    """The broker cannot serve now (for example Redis is unreachable)."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    last_id: str | None
    buffered: int


class Broker(ABC):
    """One per process. Subclasses: :mod:`hub.brokers.memory`, :mod:`hub.brokers.redis`.

    Started and stopped around its use, e.g. by :class:`hub.core.hub.Hub`::

        broker = MemoryBroker(history_size=1000)
        await broker.start(hub.dispatch)
        ids = await broker.publish("orders", [Payload("json", '{"id": 42}')])
        await broker.stop()
    """

    name: str = "broker"

    @abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect; from now on call ``deliver`` for events of subscribed channels."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release everything."""

    @abstractmethod
    async def publish(
        self, channel: str, payloads: Sequence[Payload], idempotency_key: str | None = None
    ) -> list[str]:
        """Number and store ``payloads`` in order, atomically; return their ids.

        With an ``idempotency_key``, a publish with the key of an earlier one on
        the same channel, within the broker's idempotency time, stores nothing
        and returns the earlier ids (atomically with the check); one with other
        payloads than the earlier one raises :class:`hub.inputs.InputError` (422).

        Raises :class:`BrokerUnavailable` when it cannot now, and
        :class:`hub.inputs.InputError` for events its store refuses (a producer
        bypassing the HTTP checks is held to the same rules).
        """

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Hear ``channel``'s events from now on. Returns once that holds."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel``."""

    @abstractmethod
    async def history(self, channel: str, after: Key | None, limit: int | None = None) -> History:
        """Kept events after ``after`` (all kept when None), with gap detection.

        At most ``limit`` events: a replay reads history a page at a time, so
        that a long one never sits whole in memory. ``History.more`` is where
        the next page starts (None on the last).
        """

    @abstractmethod
    async def last_key(self, channel: str) -> Key:
        """The newest id of ``channel`` (``ZERO`` when it has none)."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True while publishes and subscriptions can be served."""


@runtime_checkable
class Sweeps(Protocol):
    """An optional capability: housekeeping (expiry, forgetting idle channels) that
    the hub runs from its one timer, a few times per heartbeat interval, never per
    delivery. It must return quickly: a long job does a bounded share per call."""

    def sweep(self) -> None: ...


@runtime_checkable
class PublishesNow(Protocol):
    """An optional capability: a publish that completes without waiting (the memory
    broker's), so that the HTTP layer answers a publish in the same loop tick it
    arrives, with no task for it. The same contract as :meth:`Broker.publish`."""

    def publish_now(
        self, channel: str, payloads: Sequence[Payload], idempotency_key: str | None = None
    ) -> list[str]: ...


@runtime_checkable
class KeepsStats(Protocol):
    """An optional capability (not every broker has it): what history this
    process holds in memory, per channel (``GET /channels`` shows it, a page at
    a time: neither method may copy or walk every channel)."""

    def channel_names(self) -> Collection[str]:
        """The channels with history here: a live view, not a copy."""
        ...

    def channel_stats(self, name: str) -> ChannelStats | None: ...
