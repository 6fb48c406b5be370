"""What the HTTP layer counts for ``/metrics`` and the dashboard: plain numbers.

Publishes are counted once per request (status, events, latency), never per
delivery; the hub's own counters live in :class:`hub.core.hub.HubStats`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from hub.core.stats import Buckets


class ChannelGlobs:
    """``HUB_METRICS_CHANNELS``: the globs whose channels ``/metrics`` breaks out,
    each a label value of its own (a bounded set, unlike channel names)."""

    __slots__ = ("_patterns", "globs")

    def __init__(self, globs: list[str]) -> None:
        self.globs = list(dict.fromkeys(globs))
        self._patterns = [(g, re.compile(fnmatch.translate(g))) for g in self.globs]

    def __bool__(self) -> bool:
        return bool(self.globs)

    def matching(self, channel: str) -> list[str]:
        return [glob for glob, pattern in self._patterns if pattern.match(channel)]


@dataclass(slots=True)
class HttpStats:
    # Publish requests answered, by status code (202 accepted, else refused).
    publishes: dict[int, int] = field(default_factory=dict)
    # Events accepted by this process's publish endpoint.
    events_published: int = 0
    # Seconds from a publish request's start to its answer.
    publish_latency: Buckets = field(default_factory=Buckets)
    # Events published to the channels of each HUB_METRICS_CHANNELS glob.
    glob_events: dict[str, int] = field(default_factory=dict)
    globs: ChannelGlobs = field(default_factory=lambda: ChannelGlobs([]))
    # How late the event loop ran a timer, last measured (seconds).
    loop_lag: float = 0.0

    def published(self, status: int, seconds: float) -> None:
        self.publishes[status] = self.publishes.get(status, 0) + 1
        self.publish_latency.observe(seconds)

    def accepted(self, channel: str, events: int) -> None:
        self.events_published += events
        if self.globs.globs:  # not bool(self.globs): a Python call per publish
            for glob in self.globs.matching(channel):
                self.glob_events[glob] = self.glob_events.get(glob, 0) + events
