"""The composition root builds the broker the settings ask for, with every limit passed on."""

from __future__ import annotations

from hub.brokers.memory import MemoryBroker
from hub.brokers.redis import RedisBroker
from hub.http.app import broker_for
from hub.settings import Settings


def test_the_memory_broker_gets_its_history_bounds() -> None:
    broker = broker_for(Settings(history_size=7, history_ttl=9, history_max_bytes=5 << 20))
    assert isinstance(broker, MemoryBroker)
    assert (broker.history_size, broker.ttl_ms, broker.max_bytes) == (7, 9000, 5 << 20)


def test_the_redis_broker_gets_its_history_bounds_and_the_http_limits() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        history_size=7,
        history_ttl=9,
        max_event_bytes=1234,
        redis_prefix="t2",
    )
    broker = broker_for(settings)
    assert isinstance(broker, RedisBroker)
    assert (broker.history_size, broker.ttl_ms, broker.prefix) == (7, 9000, "t2")
    assert broker.limits.max_event_bytes == 1234
