"""Counting without cost: a fixed-bucket histogram of plain integers.

The hot paths only add to lists and ints; ``/metrics`` reads them at scrape
time (:mod:`hub.http.metrics`), and the dashboard reads quantiles over a
window from two snapshots of the same counts.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from 100 us to 10 s, about three buckets per decade.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Buckets:
    """A histogram as Prometheus has it: ``counts[i]`` holds the observations
    ``<= bounds[i]`` (and above the bound before); the last count is ``+Inf``."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, ``+Inf`` last."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def snapshot(self) -> list[int]:
        return list(self.counts)

    def quantile(self, q: float, since: Sequence[int] | None = None) -> float | None:
        """The ``q`` quantile (0-1) of what was observed since the ``since``
        snapshot (all time without one), as the upper bound of the bucket it
        falls in (the largest finite bound for ``+Inf``); None with no observation."""
        counts = self.counts if since is None else [a - b for a, b in zip(self.counts, since, strict=True)]
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(counts):
            seen += n
            if seen >= rank and n:
                return self.bounds[min(i, len(self.bounds) - 1)]
        return self.bounds[-1]
