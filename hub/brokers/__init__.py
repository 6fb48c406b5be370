"""Brokers behind one interface, chosen by URL: none -> memory, ``redis://`` -> Redis."""

from __future__ import annotations

from hub.brokers.base import Broker, BrokerUnavailable, ChannelStats
from hub.brokers.memory import MemoryBroker
from hub.inputs import Limits
from hub.settings import Settings


def broker_for(settings: Settings) -> Broker:
    if settings.redis_url is None:
        return MemoryBroker(history_size=settings.history_size)
    from hub.brokers.redis import RedisBroker

    return RedisBroker(
        settings.redis_url,
        prefix=settings.redis_prefix,
        history_size=settings.history_size,
        pool_size=settings.redis_pool_size,
        command_timeout=settings.redis_timeout,
        # What comes from Redis is checked exactly as an HTTP publish is.
        limits=Limits(settings.max_event_bytes, settings.max_body_bytes, settings.max_channels_per_stream),
    )


__all__ = ["Broker", "BrokerUnavailable", "ChannelStats", "MemoryBroker", "broker_for"]
