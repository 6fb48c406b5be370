"""The benchmark scenarios.  Each takes a started server and, if it holds streams, the generator pool.

All loops are bounded: publishing stops after a fixed duration, connecting has
a deadline, draining waits at most DRAIN_MAX_S.
"""

from __future__ import annotations

import logging
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from loadtests.common import LOOPBACK
from loadtests.gen.pool import GeneratorPool
from loadtests.gen.publisher import (
    PublishResult,
    publish_closed_loop,
    publish_each_once,
    publish_rate,
    publish_unpaced,
    run_async,
)
from loadtests.gen.stats import latency_summary
from loadtests.servers import Server

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # let the server finish registering subscribers before measuring
DRAIN_MAX_S = 5.0  # after publishing stops, wait this long at most for stragglers
DRAIN_QUIET_S = 0.5
IN_FLIGHT_DELIVERIES = 10_000  # closed-loop window, in deliveries (events x subscribers)
CONNECT_DEADLINE_S = 60.0


@dataclass
class Sizes:
    """Scenario sizes (the --quick mode shrinks them)."""

    connections: tuple[int, ...] = (1_000, 10_000, 19_000)
    fanout: tuple[int, ...] = (100, 1_000, 5_000)
    duration_s: float = 10.0
    latency_subscribers: int = 1_000
    latency_rate: float = 100.0
    channel_subscribers: int = 10_000
    channels: int = 1_000
    wave_size: int = 10_000
    waves: int = 5
    publish_connections: tuple[int, ...] = (8, 32)
    publish_channels: int = 1_000
    many_channels: int = 1_000_000
    many_connections: int = 8
    many_ttl_s: float = 10.0  # HUB_HISTORY_TTL of the many scenario's hub
    many_heartbeat_s: float = 2.0  # HUB_HEARTBEAT_SECONDS: the sweep runs every quarter of it

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            connections=(1_000, 5_000), fanout=(100, 1_000), duration_s=3.0, latency_subscribers=500,
            channel_subscribers=2_000, channels=200, wave_size=2_000, waves=3, publish_connections=(8,),
            many_channels=100_000,
        )  # fmt: skip


def server_env(scenario: str, sizes: Sizes) -> dict[str, str]:
    """Environment a scenario needs its server started with (laid over the server's own)."""
    if scenario == "many":
        return {
            "HUB_HISTORY_TTL": f"{sizes.many_ttl_s:g}",
            "HUB_HEARTBEAT_SECONDS": f"{sizes.many_heartbeat_s:g}",
        }
    return {}


def _unique(prefix: str) -> str:
    """A fresh channel name so no scenario sees another's history."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _drain(pool: GeneratorPool) -> None:
    """Wait until deliveries stop arriving (bounded)."""
    end = time.monotonic() + DRAIN_MAX_S
    last, quiet_since = pool.received_total(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now_count = pool.received_total()
        if now_count != last:
            last, quiet_since = now_count, time.monotonic()
        elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
            return


def _connect(server: Server, pool: GeneratorPool, channels: list[str]) -> dict[str, Any]:
    res = pool.connect(server.target(), channels, timeout=CONNECT_DEADLINE_S)
    time.sleep(SETTLE_S)
    res["held"] = pool.snapshot()["held"]
    if res["failed"] or res["held"] < len(channels):
        log.warning("%s: %d/%d streams held (%s)", server.name, res["held"], len(channels), res["errors"])
    return res


def connections(server: Server, pool: GeneratorPool, n: int) -> dict[str, Any]:
    """Open n idle streams: time to first bytes of all, failures, server RSS per stream."""
    rss0 = server.rss_kb()
    res = _connect(server, pool, [_unique("idle")] * n)
    rss1 = server.rss_kb()
    pool.close_streams()
    held = int(res["held"])
    out = {
        "streams": n,
        "opened": res["opened"],
        "failed": res["failed"],
        "held_after_settle": held,
        "errors": res["errors"],
        "time_to_open_all_s": _round(res["time_to_all_first_bytes_s"], 3),
        "connect_wall_s": round(res["wall_s"], 3),
        "server_rss_before_kb": rss0,
        "server_rss_after_kb": rss1,
        "rss_per_stream_kb": rss_per_stream(rss0, rss1, held, n),
    }
    out.update(_extra_rss(server, "after"))
    time.sleep(0.5)
    return out


def rss_per_stream(rss0: int, rss1: int, held: int, requested: int) -> float | None:
    """KB per held stream; None when most streams were refused (the delta is then noise)."""
    if held < 0.9 * requested or held == 0:
        return None
    return round((rss1 - rss0) / held, 2)


def _extra_rss(server: Server, label: str) -> dict[str, Any]:
    """The naive peer's redis-server holds per-subscriber state too: report it apart."""
    fn = getattr(server, "redis_rss_kb", None)
    return {f"redis_rss_{label}_kb": fn()} if fn else {}


def _delivery_result(
    pool: GeneratorPool, pub: PublishResult, fanout: int, at_end: int, cpu: float, server_cpu: float
) -> dict[str, Any]:
    snap = pool.snapshot()
    received = int(snap["received"])
    expected = pub.accepted * fanout
    out: dict[str, Any] = {
        "publish": pub.as_dict(),
        "deliveries": received,
        "deliveries_per_s": round(at_end / pub.elapsed_s) if pub.elapsed_s else 0,
        "delivered_fraction": round(received / expected, 4) if expected else None,
        "unparsed_timestamps": snap["unparsed"],
        "streams_dropped_by_server": snap["closed_by_peer"],
        "generator_cpu_busy": round(cpu / pub.elapsed_s, 2) if pub.elapsed_s else None,
        # What each delivery cost the server, whichever side set the rate (lower is better).
        "server_cpu_busy": round(server_cpu / pub.elapsed_s, 2) if pub.elapsed_s else None,
        "server_us_per_delivery": round(server_cpu / at_end * 1e6, 2) if at_end else None,
    }
    out.update(latency_summary(snap))
    return out


def _publish_and_count(
    server: Server,
    pool: GeneratorPool,
    publish: Callable[[], Coroutine[Any, Any, PublishResult]],
    per_event: int,
) -> dict[str, Any]:
    """Run one publisher against the streams already open, count what reached them
    (``per_event`` deliveries expected per accepted event), then close the streams."""
    pool.reset()
    cpu0, server_cpu0 = pool.cpu_seconds(), server.cpu_seconds()
    pub = run_async(publish)
    assert isinstance(pub, PublishResult)
    at_end, cpu = pool.received_total(), pool.cpu_seconds() - cpu0
    server_cpu = server.cpu_seconds() - server_cpu0
    _drain(pool)
    result = _delivery_result(pool, pub, per_event, at_end, cpu, server_cpu)
    pool.close_streams()
    return result


def fanout(server: Server, pool: GeneratorPool, subscribers: int, duration: float) -> dict[str, Any]:
    """S subscribers on one channel; closed-loop publisher at the highest sustained rate."""
    channel = _unique("fan")
    conn = _connect(server, pool, [channel] * subscribers)
    live = max(1, int(conn["held"]))
    window = max(2.0, IN_FLIGHT_DELIVERIES / live)
    result = _publish_and_count(
        server,
        pool,
        lambda: publish_closed_loop(server.target(), [channel], duration, window, live, pool.received_total),
        live,
    )
    return {"subscribers": subscribers, "held": conn["held"], "window_events": round(window, 1), **result}


def latency(
    server: Server, pool: GeneratorPool, subscribers: int, rate: float, duration: float
) -> dict[str, Any]:
    """S subscribers, a fixed open-loop publish rate: publish-to-receive latency."""
    channel = _unique("lat")
    conn = _connect(server, pool, [channel] * subscribers)
    live = max(1, int(conn["held"]))
    result = _publish_and_count(
        server, pool, lambda: publish_rate(server.target(), [channel], rate, duration, conns=2), live
    )
    return {"subscribers": subscribers, "held": conn["held"], "rate": rate, **result}


def channels(
    server: Server, pool: GeneratorPool, subscribers: int, n_channels: int, duration: float
) -> dict[str, Any]:
    """Subscribers spread evenly over many channels; events round-robin over the channels."""
    prefix = _unique("ch")
    names = [f"{prefix}x{i}" for i in range(n_channels)]
    conn = _connect(server, pool, [names[i % n_channels] for i in range(subscribers)])
    per_channel = max(1.0, int(conn["held"]) / n_channels)
    window = max(8.0, IN_FLIGHT_DELIVERIES / per_channel)
    result = _publish_and_count(
        server,
        pool,
        lambda: publish_closed_loop(
            server.target(), names, duration, window, per_channel, pool.received_total, conns=8
        ),
        round(per_channel),
    )
    return {"subscribers": subscribers, "channels": n_channels, "held": conn["held"], **result}


def publish(server: Server, connections: int, n_channels: int, duration: float) -> dict[str, Any]:
    """No subscribers: `connections` publishers POST back to back, in turn over many channels.

    Measures the publish path alone (parse, validate, broker, 202), not fan-out.  The
    publisher runs in this process: ``publisher_cpu_busy`` near 1.0 means it, not the
    server, set the rate.
    """
    prefix = _unique("pub")
    names = [f"{prefix}x{i}" for i in range(n_channels)]
    cpu0, server_cpu0 = time.process_time(), server.cpu_seconds()
    pub = run_async(lambda: publish_unpaced(server.target(), names, duration, connections))
    assert isinstance(pub, PublishResult)
    cpu = time.process_time() - cpu0
    server_cpu = server.cpu_seconds() - server_cpu0
    return {
        "connections": connections,
        "channels": n_channels,
        "publish": pub.as_dict(),
        "publishes_per_s": round(pub.accepted / pub.elapsed_s) if pub.elapsed_s else 0,
        # Answers other than 2xx: a rate with refusals in it is not a comparable figure.
        "refused": pub.errors,
        "publisher_cpu_busy": round(cpu / pub.elapsed_s, 2) if pub.elapsed_s else None,
        # What each publish cost the server, whichever side set the rate (lower is better).
        "server_cpu_busy": round(server_cpu / pub.elapsed_s, 2) if pub.elapsed_s else None,
        "server_us_per_publish": round(server_cpu / pub.accepted * 1e6, 2) if pub.accepted else None,
    }


# many: the publisher is given at least this rate before it is stopped (bounds the run).
MANY_MIN_RATE = 1_000.0
# many: after the TTL, the sweep has this long (plus one second per 20,000 channels) to forget all.
MANY_FORGET_GRACE_S = 30.0
METRICS_POLL_S = 0.5


def many(server: Server, n_channels: int, connections: int, ttl_s: float) -> dict[str, Any]:
    """One event to each of n distinct channels, then nothing: does the hub forget them all
    once the history TTL passed, and does its memory come back?

    The server must run with a short HUB_HISTORY_TTL (``ttl_s``) and heartbeat (see
    :func:`server_env`), so that its sweep forgets expired channels every few tenths of a
    second.  Reports the publish rate, peak RSS (VmHWM), RSS and ``ssehub_history_bytes``
    right after publishing, how long until ``ssehub_channels_forgotten_total`` reached the
    number of channels accepted, and RSS once it held still after that.
    """
    prefix = _unique("many")
    names = [f"{prefix}x{i}" for i in range(n_channels)]
    before = _metrics(server)
    rss0 = server.rss_kb()
    cpu0 = time.process_time()
    timeout = 30.0 + n_channels / MANY_MIN_RATE
    pub = run_async(lambda: publish_each_once(server.target(), names, connections, timeout))
    assert isinstance(pub, PublishResult)
    cpu = time.process_time() - cpu0
    published_at = time.monotonic()
    rss_published = server.rss_kb()
    after_pub = _metrics(server)
    forgotten0 = int(before.get("ssehub_channels_forgotten_total", 0))
    want = pub.accepted  # distinct channels that have an event: each was published once
    deadline = published_at + ttl_s + MANY_FORGET_GRACE_S + n_channels / 20_000
    forgotten, end, rss_max = _wait_forgotten(server, forgotten0 + want, deadline)
    forget_s = time.monotonic() - published_at
    if forgotten - forgotten0 < want:
        log.warning("%s: %d of %d channels forgotten after %.0f s", server.name, forgotten, want, forget_s)
    rss_settled, settle_s = _settled_rss(server)
    # VmHWM is folded from the kernel's (approximate, per-CPU) RSS counters now and then,
    # so it can trail a VmRSS read a moment before: the peak is the larger of them.
    peak = max(server.peak_rss_kb(), rss_published, rss_max)
    return {
        "channels": n_channels,
        "connections": connections,
        "history_ttl_s": ttl_s,
        "publish": pub.as_dict(),
        "time_to_publish_all_s": round(pub.elapsed_s, 2),
        "publishes_per_s": round(pub.accepted / pub.elapsed_s) if pub.elapsed_s else 0,
        "publisher_cpu_busy": round(cpu / pub.elapsed_s, 2) if pub.elapsed_s else None,
        "rss_before_kb": rss0,
        "peak_rss_kb": peak,
        "rss_after_publish_kb": rss_published,
        "history_bytes_after_publish": _int(after_pub, "ssehub_history_bytes"),
        "forgotten_after_publish": int(after_pub.get("ssehub_channels_forgotten_total", 0)) - forgotten0,
        "evicted_after_publish": _int(after_pub, "ssehub_history_evicted_total"),
        "forgotten": forgotten - forgotten0,
        "all_forgotten": forgotten - forgotten0 >= want,
        "time_to_forget_all_s": round(forget_s, 2),
        "history_bytes_after_forget": _int(end, "ssehub_history_bytes"),
        "expired": _int(end, "ssehub_history_expired_total"),
        "evicted": _int(end, "ssehub_history_evicted_total"),
        "rss_settled_kb": rss_settled,
        "settle_s": settle_s,
        "rss_settled_over_before": round(rss_settled / rss0, 3) if rss0 else None,
    }


def _metrics(server: Server) -> dict[str, float]:
    """The unlabelled samples of the server's /metrics (Prometheus text format)."""
    url = f"http://{LOOPBACK}:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            out[name] = float(value)
    return out


def _int(metrics: dict[str, float], name: str) -> int | None:
    value = metrics.get(name)
    return int(value) if value is not None else None


def _wait_forgotten(server: Server, want: int, deadline: float) -> tuple[int, dict[str, float], int]:
    """Poll /metrics until ssehub_channels_forgotten_total reaches ``want`` (or the deadline).

    Returns the last count, the last metrics and the highest RSS read meanwhile.
    """
    rss_max = 0
    while True:
        metrics = _metrics(server)
        rss_max = max(rss_max, server.rss_kb())
        forgotten = int(metrics.get("ssehub_channels_forgotten_total", 0))
        if forgotten >= want or time.monotonic() >= deadline:
            return forgotten, metrics, rss_max
        time.sleep(METRICS_POLL_S)


def waves(server: Server, pool: GeneratorPool, size: int, n_waves: int) -> dict[str, Any]:
    """Connect `size` streams, disconnect, repeat: does RSS come back down?"""
    rows = []
    base = server.rss_kb()
    for i in range(n_waves):
        res = _connect(server, pool, [_unique("wave")] * size)
        connected = server.rss_kb()
        pool.close_streams()
        after, settle_s = _settled_rss(server)
        rows.append({
            "wave": i + 1, "held": res["held"], "failed": res["failed"],
            "time_to_open_all_s": _round(res["time_to_all_first_bytes_s"], 3),
            "rss_connected_kb": connected, "rss_after_kb": after, "settle_s": settle_s,
        })  # fmt: skip
    first, last = rows[0]["rss_after_kb"], rows[-1]["rss_after_kb"]
    growth = (last - first) / first if first else None
    return {
        "size": size,
        "rss_start_kb": base,
        "waves": rows,
        "last_vs_first_after_growth": round(growth, 4) if growth is not None else None,
        "within_10_percent": growth is not None and abs(growth) <= 0.10,
    }


def _settled_rss(server: Server, steady_s: float = 3.0, limit_s: float = 15.0) -> tuple[int, float]:
    """RSS once it stopped moving after a wave's closes (or at ``limit_s``).

    Servers give memory back on their own schedule (the hub releases it once a
    wave of closes is over; glibc and nginx at other times), so every system
    gets the same chance: RSS is read when it held still for ``steady_s``.
    """
    t0 = time.monotonic()
    last, since = server.rss_kb(), t0
    while (now := time.monotonic()) - t0 < limit_s:
        time.sleep(0.25)
        rss = server.rss_kb()
        if rss != last:
            last, since = rss, time.monotonic()
        elif now - since >= steady_s:
            break
    return last, round(time.monotonic() - t0, 2)


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None
