"""``GET /metrics``: Prometheus text format, read from the hub at scrape time.

A custom collector reads the hub's plain integer counters when scraped, so
the hot path pays nothing for metrics (no per-delivery ``Counter.inc``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.http.raw import AppState

# What a broker may count, read by attribute name (not every broker keeps history in memory).
_BROKER_COUNTS = (
    ("bytes", "ssehub_history_bytes", "Bytes the history kept in this process costs", GaugeMetricFamily),
    (
        "evicted",
        "ssehub_history_evicted",
        "Events dropped for HUB_HISTORY_MAX_BYTES",
        CounterMetricFamily,
    ),
    ("expired", "ssehub_history_expired", "Events dropped past HUB_HISTORY_TTL", CounterMetricFamily),
    ("forgotten", "ssehub_channels_forgotten", "Channels forgotten with their history", CounterMetricFamily),
)


class HubCollector(Collector):
    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        guard = self._state.connections
        if guard is not None:
            yield GaugeMetricFamily("ssehub_connections", "Open client connections", value=guard.open)
            for name, value, what in (
                (
                    "header_timeouts",
                    guard.timed_out,
                    "Connections closed for not sending a request head in time",
                ),
                (
                    "headers_too_large",
                    guard.too_large,
                    "Requests refused for a head over HUB_MAX_HEADER_BYTES",
                ),
                ("connections_evicted", guard.evicted, "Idle connections closed near the open-file limit"),
                ("connections_refused", guard.refused, "Connections refused at the open-file limit"),
                ("invalid_requests", guard.invalid.total, "Requests the HTTP parser refused (400)"),
            ):
                yield CounterMetricFamily(f"ssehub_{name}", what, value=value)
        requests = CounterMetricFamily(
            "ssehub_requests", "Requests the stream and publish routes took", labels=["route"]
        )
        for route, count in self._state.requests.items():
            requests.add_metric([route], count)
        yield requests
        hub = self._state.hub
        if hub is None:
            return
        s = hub.stats
        yield GaugeMetricFamily("ssehub_streams", "Open streams", value=len(hub.subscribers))
        yield GaugeMetricFamily("ssehub_channels", "Channels with local subscribers", value=len(hub.channels))
        yield GaugeMetricFamily(
            "ssehub_broker_ready", "1 while the broker is usable", value=int(hub.broker.ready)
        )
        yield CounterMetricFamily("ssehub_events", "Events dispatched to this process", value=s.events)
        yield CounterMetricFamily("ssehub_deliveries", "Event deliveries to streams", value=s.deliveries)
        yield CounterMetricFamily("ssehub_streams_opened", "Streams opened", value=s.streams_opened)
        yield CounterMetricFamily("ssehub_streams_closed", "Streams closed", value=s.streams_closed)
        yield CounterMetricFamily("ssehub_slow_cut", "Streams cut for falling behind", value=s.slow_cut)
        yield CounterMetricFamily(
            "ssehub_streams_gone",
            "Streams ended because their connection was gone under a write",
            value=s.gone,
        )
        yield CounterMetricFamily("ssehub_refused", "Streams refused (full or draining)", value=s.refused)
        broker = hub.broker
        for attr, name, what, family in _BROKER_COUNTS:
            kept = getattr(broker, attr, None)
            if isinstance(kept, int):
                yield family(name, what, value=kept)
        invalid = getattr(hub.broker, "invalid_messages", None)
        if isinstance(invalid, int):
            yield CounterMetricFamily(
                "ssehub_broker_invalid_messages",
                "Messages and stored entries from the broker dropped as invalid",
                value=invalid,
            )


def make_registry(state: AppState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(state))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
