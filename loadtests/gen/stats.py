"""Per-process delivery counters and a fixed-bucket latency histogram.

Buckets are 0.1 ms wide up to 10 s: an index increment per event is far
cheaper than keeping every sample, and 0.1 ms is finer than this machine's noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUCKET_NS = 100_000  # 0.1 ms
N_BUCKETS = 100_000  # 10 s
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Stats:
    """Counters updated by every subscriber protocol of one process."""

    received: int = 0
    unparsed: int = 0  # events whose timestamp was cut by a chunk-size line
    overflow: int = 0  # latencies beyond the histogram range
    max_ns: int = 0
    bytes: int = 0
    opened: int = 0
    failed: int = 0
    closed_by_peer: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def reset_deliveries(self) -> None:
        """Forget deliveries and latencies (keep connection counters)."""
        self.received = self.unparsed = self.overflow = self.max_ns = self.bytes = 0
        self.hist = [0] * N_BUCKETS

    def snapshot(self) -> dict[str, object]:
        """Picklable summary; the histogram is sent sparse."""
        return {
            "received": self.received,
            "unparsed": self.unparsed,
            "overflow": self.overflow,
            "max_ns": self.max_ns,
            "bytes": self.bytes,
            "opened": self.opened,
            "failed": self.failed,
            "closed_by_peer": self.closed_by_peer,
            "hist": {i: c for i, c in enumerate(self.hist) if c},
        }


def merge_snapshots(snaps: list[dict[str, object]]) -> dict[str, object]:
    """Sum worker snapshots into one."""
    out: dict[str, object] = {}
    hist: dict[int, int] = {}
    for snap in snaps:
        for key, val in snap.items():
            if key == "hist":
                assert isinstance(val, dict)
                for i, c in val.items():
                    hist[i] = hist.get(i, 0) + c
            elif key == "max_ns":
                out[key] = max(int(out.get(key, 0)), int(val))  # type: ignore[call-overload]
            else:
                out[key] = int(out.get(key, 0)) + int(val)  # type: ignore[call-overload]
    out["hist"] = hist
    return out


def latency_summary(snap: dict[str, object]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max in milliseconds from a merged snapshot."""
    hist = snap.get("hist", {})
    assert isinstance(hist, dict)
    overflow = int(snap.get("overflow", 0))  # type: ignore[call-overload]
    total = sum(hist.values()) + overflow
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = _percentile(hist, total, p)
    max_ns = int(snap.get("max_ns", 0))  # type: ignore[call-overload]
    out["max_ms"] = round(max_ns / 1e6, 2) if total else None
    out["samples"] = float(total)
    return out


def _percentile(hist: dict[int, int], total: int, p: float) -> float | None:
    if total == 0:
        return None
    rank = total * p / 100.0
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            # Report the bucket's upper edge: conservative by at most 0.1 ms.
            return round((i + 1) * BUCKET_NS / 1e6, 2)
    return round(N_BUCKETS * BUCKET_NS / 1e6, 2)  # in the overflow range
