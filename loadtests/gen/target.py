"""Description of a system under test: where to subscribe and how to publish.

A Target is a small picklable dataclass so that it can be handed to worker
processes started with multiprocessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Payloads start with the 19-digit nanosecond timestamp so subscribers can slice it
# out of the raw byte stream without parsing JSON (time.time_ns() has 19 digits until 2286).
TS_MARKER = b'"t":'
TS_DIGITS = 19


@dataclass(frozen=True)
class Target:
    """One system under test reachable over loopback."""

    name: str
    host: str
    port: int
    sub_path: str  # format string with {ch}
    pub_path: str  # format string with {ch}
    wrap_data: bool  # hub wants {"data": payload}; nchan and naive take the payload as is

    def subscribe_request(self, channel: str) -> bytes:
        """Raw HTTP/1.1 GET that opens one SSE stream."""
        path = self.sub_path.format(ch=channel)
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()

    def publish_request(self, channel: str, padding: bytes = b"x" * 32) -> bytes:
        """Raw keep-alive HTTP/1.1 POST carrying a fresh timestamp."""
        payload = b'{"t":%d,"p":"%s"}' % (time.time_ns(), padding)
        body = b'{"data":' + payload + b"}" if self.wrap_data else payload
        head = (
            f"POST {self.pub_path.format(ch=channel)} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body


def hub_target(port: int, name: str = "hub") -> Target:
    """ssehub's HTTP API."""
    return Target(name, "127.0.0.1", port, "/channels/{ch}/stream", "/channels/{ch}/events", True)


def nchan_target(port: int) -> Target:
    """nginx+nchan with the locations of peers/nchan/nginx.conf.template."""
    return Target("nchan", "127.0.0.1", port, "/sub/{ch}", "/pub/{ch}", False)


def naive_target(port: int, name: str = "naive") -> Target:
    """The naive FastAPI hub of peers/naive/app.py."""
    return Target(name, "127.0.0.1", port, "/subscribe/{ch}", "/publish/{ch}", False)
