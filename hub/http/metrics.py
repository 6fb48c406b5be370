"""``GET /metrics``: Prometheus text format, read from the hub at scrape time.

A custom collector reads the hub's plain integer counters when scraped, so
the hot path pays nothing for metrics (no per-delivery ``Counter.inc``): the
core counts per flush, the publish endpoint once per request, and the
publish-to-socket delay is sampled (one event in ``DELAY_SAMPLE``).

With ``--workers N`` one scrape answers for the whole node: each worker
writes a snapshot of its series to a directory the supervisor shares, once a
second (:func:`write_snapshot`), and the worker that is scraped adds its own
fresh series to the others' (:func:`render`). Counters of a worker that died
stay in the sum (they must never go back); its gauges leave it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.core.stats import Buckets
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
    (
        "invalid_messages",
        "ssehub_broker_invalid_messages",
        "Messages and stored entries from the broker dropped as invalid",
        CounterMetricFamily,
    ),
    ("messages_received", "ssehub_redis_messages", "Redis pub/sub messages received", CounterMetricFamily),
    (
        "reconnects",
        "ssehub_redis_reconnects",
        "Times the Redis pub/sub connection came back after it was lost or refused",
        CounterMetricFamily,
    ),
    (
        "outage_seconds",
        "ssehub_redis_outage_seconds",
        "Seconds this process spent without Redis (a current outage included)",
        CounterMetricFamily,
    ),
)


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def histogram(name: str, what: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name,
        what,
        buckets=[(_le(le), n) for le, n in buckets.cumulative()],
        sum_value=buckets.sum,
    )


class HubCollector(Collector):
    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._connections()
        yield from self._publishes()
        hub = self._state.hub
        if hub is None:
            return
        s = hub.stats
        yield GaugeMetricFamily("ssehub_streams", "Open streams", value=len(hub.subscribers))
        yield GaugeMetricFamily("ssehub_channels", "Channels with local subscribers", value=len(hub.channels))
        yield GaugeMetricFamily(
            "ssehub_broker_ready", "1 while the broker is usable", value=int(hub.broker.ready)
        )
        for name, value, what in (
            ("ssehub_events", s.events, "Events dispatched to this process"),
            ("ssehub_deliveries", s.deliveries, "Event deliveries to streams"),
            ("ssehub_sent_bytes", s.bytes_sent, "Bytes written to streams (events, replays, heartbeats)"),
            ("ssehub_streams_opened", s.streams_opened, "Streams opened"),
            ("ssehub_streams_closed", s.streams_closed, "Streams closed"),
            ("ssehub_slow_cut", s.slow_cut, "Streams cut for falling behind"),
            ("ssehub_streams_gone", s.gone, "Streams ended because their connection was gone under a write"),
            ("ssehub_refused", s.refused, "Streams refused (full or draining)"),
            ("ssehub_replays", s.replays, "Resumes served: a channel of a stream that sent a Last-Event-ID"),
            ("ssehub_replayed_events", s.replayed_events, "Events read from history for resumes"),
        ):
            yield CounterMetricFamily(name, what, value=value)
        gaps = CounterMetricFamily(
            "ssehub_gaps",
            "hub.gap events sent: resume older than history, malformed id, events lost by the broker",
            labels=["cause"],
        )
        gaps.add_metric(["too_old"], s.gaps_too_old)
        gaps.add_metric(["malformed"], s.gaps_malformed)
        gaps.add_metric(["broker"], s.gaps_broker)
        yield gaps
        yield histogram(
            "ssehub_delivery_delay_seconds",
            "Seconds from an event's broker timestamp (its id) to its write to the streams, one event in 64",
            s.delay,
        )
        broker = hub.broker
        for attr, name, what, family in _BROKER_COUNTS:
            kept = getattr(broker, attr, None)
            if isinstance(kept, int | float) and not isinstance(kept, bool):
                yield family(name, what, value=kept)
        globs = self._state.stats.globs
        if globs:
            streams = dict.fromkeys(globs.globs, 0)
            for name, channel in hub.channels.items():
                for glob in globs.matching(name):
                    streams[glob] += channel.subscribers
            by_glob = GaugeMetricFamily(
                "ssehub_glob_streams",
                "Streams of the channels a HUB_METRICS_CHANNELS glob matches",
                labels=["glob"],
            )
            for glob, count in streams.items():
                by_glob.add_metric([glob], count)
            yield by_glob

    def _connections(self) -> Iterator[Metric]:
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

    def _publishes(self) -> Iterator[Metric]:
        st = self._state.stats
        publishes = CounterMetricFamily(
            "ssehub_publishes", "Publish requests answered, by status code (202: accepted)", labels=["code"]
        )
        for code, count in sorted(st.publishes.items()):
            publishes.add_metric([str(code)], count)
        yield publishes
        yield CounterMetricFamily(
            "ssehub_events_published",
            "Events accepted by this process's publish endpoint",
            value=st.events_published,
        )
        yield histogram(
            "ssehub_publish_duration_seconds",
            "Seconds from a publish request's start to its answer",
            st.publish_latency,
        )
        yield GaugeMetricFamily(
            "ssehub_event_loop_lag_seconds",
            "How late the event loop ran a timer due now, last measured (once a second)",
            value=st.loop_lag,
        )
        if st.globs:
            family = CounterMetricFamily(
                "ssehub_glob_events_published",
                "Events published to the channels a HUB_METRICS_CHANNELS glob matches",
                labels=["glob"],
            )
            for glob in st.globs.globs:
                family.add_metric([glob], st.glob_events.get(glob, 0))
            yield family


def make_registry(state: AppState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(state))
    # The process's own figures (CPU, memory, open files), Python's and its GC's.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, state: AppState) -> bytes:
    """This process's series, or with ``--workers`` the node's (see the module's doc)."""
    directory = state.metrics_dir
    if directory is None:
        return generate_latest(registry)
    own = snapshot(registry.collect())
    _write(Path(directory), own)
    others = [s for s in _read_all(Path(directory)) if s["pid"] != os.getpid()]
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Merged([own, *others]))
    return generate_latest(merged)


# -- one node, several workers ------------------------------------------------

# Samples not summed over workers (the rest are).
_COMBINE: dict[str, Callable[[Iterable[float]], float]] = {
    "process_start_time_seconds": min,
    "process_max_fds": min,
    "python_info": max,
    "ssehub_broker_ready": min,
    "ssehub_event_loop_lag_seconds": max,
}


def snapshot(metrics: Iterable[Metric]) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "families": [
            {
                "name": m.name,
                "type": m.type,
                "doc": m.documentation,
                "samples": [[s.name, s.labels, s.value] for s in m.samples],
            }
            for m in metrics
        ],
    }


def write_snapshot(registry: CollectorRegistry, directory: str) -> None:
    """This worker's series where the other workers find them (once a second)."""
    _write(Path(directory), snapshot(registry.collect()))


def _write(directory: Path, snap: dict[str, Any]) -> None:
    path = directory / f"{snap['pid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(json.dumps(snap).encode())
    os.replace(tmp, path)  # readers never see half a file


def _read_all(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_bytes()))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Merged(Collector):
    """The workers' snapshots as one: samples summed (or as ``_COMBINE`` says),
    the gauges of workers that are gone left out."""

    def __init__(self, snaps: list[dict[str, Any]]) -> None:
        self._snaps = snaps

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
        live = 0
        for snap in self._snaps:
            alive = _alive(int(snap["pid"]))
            live += alive
            for fam in snap["families"]:
                if fam["type"] in ("gauge", "info") and not alive:
                    continue
                if fam["name"] not in families:
                    families[fam["name"]] = Metric(fam["name"], fam["doc"], fam["type"])
                    values[fam["name"]] = {}
                for name, labels, value in fam["samples"]:
                    values[fam["name"]].setdefault((name, tuple(sorted(labels.items()))), []).append(value)
        yield GaugeMetricFamily(
            "ssehub_workers", "Worker processes whose series this answer adds up", value=live
        )
        for fname, metric in families.items():
            for (name, labels), got in values[fname].items():
                metric.add_sample(name, dict(labels), _COMBINE.get(fname, sum)(got))
            yield metric
