"""Locust users for ssehub: SSE subscribers that report latency, and publishers.

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8000 \\
        -u 500 -r 100 --run-time 60s SseSubscriber Publisher

Each received event becomes a locust request event (type "SSE") whose response
time is the publish-to-receive latency, taken from the ``"t"`` nanosecond
timestamp the Publisher puts first in the payload (same clock: loopback only).
Publisher POSTs are ordinary locust requests.  The run stops by itself: at
--run-time, or at --hard-stop-seconds (default 600) when no --run-time is given.

Locust's gevent users are much slower than loadtests.gen; use this for
interactive exploration and the locust UI, and loadtests.bench for numbers.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import gevent  # type: ignore[import-untyped]
from locust import HttpUser, User, between, constant_throughput, events, task
from locust.env import Environment

# Same payload convention as loadtests.gen.target (copied: locust puts only this
# file's folder on sys.path, not the repository root).
TS_MARKER = b'"t":'
TS_DIGITS = 19
LOOPBACK_PREFIXES = ("127.", "localhost", "::1")


def _options(parser: Any) -> None:
    parser.add_argument("--sse-channels", type=int, default=1, help="channels the users spread over")
    parser.add_argument("--sub-path", default="/channels/{ch}/stream", help="subscribe path, {ch} = channel")
    parser.add_argument("--pub-path", default="/channels/{ch}/events", help="publish path, {ch} = channel")
    parser.add_argument("--raw-payload", action="store_true", help="publish the payload unwrapped (nchan)")
    parser.add_argument("--pub-rate", type=float, default=10.0, help="events/s per Publisher user")
    parser.add_argument(
        "--stream-seconds", type=float, default=120.0, help="reconnect each stream after this"
    )
    parser.add_argument("--hard-stop-seconds", type=float, default=600.0, help="stop if --run-time is unset")


def _hard_stop(environment: Environment, **_: Any) -> None:
    """Guarantee the run ends by itself even without --run-time."""
    opts = environment.parsed_options
    if opts is not None and not opts.run_time and environment.runner is not None:
        runner = environment.runner
        gevent.spawn_later(opts.hard_stop_seconds, runner.quit)


# locust's EventHook.add_listener is untyped for mypy.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_hard_stop)  # type: ignore[no-untyped-call]


def _channel(user: User) -> str:
    opts = user.environment.parsed_options
    n = opts.sse_channels if opts is not None else 1
    return f"locust{random.randrange(n)}"


def _loopback(host: str) -> str:
    if not host.startswith(LOOPBACK_PREFIXES):
        raise ValueError(f"only loopback hosts are allowed, got {host!r}")
    return host


class SseSubscriber(User):
    """Holds one SSE stream; every event is reported with its delivery latency."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        url = urlsplit(self.host or "http://127.0.0.1:8000")
        self.addr = (_loopback(url.hostname or "127.0.0.1"), url.port or 80)

    @task
    def hold_stream(self) -> None:
        opts = self.environment.parsed_options
        channel = _channel(self)
        path = (opts.sub_path if opts else "/channels/{ch}/stream").format(ch=channel)
        seconds = opts.stream_seconds if opts else 120.0
        started = time.perf_counter()
        try:
            sock = socket.create_connection(self.addr, timeout=10)
        except OSError as exc:
            self._fire("connect", 0.0, 0, exc)
            return
        try:
            self._read(sock, path, seconds)
        except OSError as exc:
            self._fire("stream", (time.perf_counter() - started) * 1000, 0, exc)
        finally:
            sock.close()

    def _read(self, sock: socket.socket, path: str, seconds: float) -> None:
        host = f"{self.addr[0]}:{self.addr[1]}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        t0 = time.perf_counter()
        first = sock.recv(65536)
        if not first.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(first[:60].decode(errors="replace"))
        self._fire("connect", (time.perf_counter() - t0) * 1000, len(first), None)
        buf = first
        deadline = time.monotonic() + seconds
        sock.settimeout(1.0)
        while time.monotonic() < deadline:
            buf = self._scan(buf)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("stream closed by server")
            buf += data

    def _scan(self, buf: bytes) -> bytes:
        """Report every complete timestamped event in buf; return the unscanned rest."""
        i = buf.find(TS_MARKER)
        end = 0
        while i >= 0 and i + len(TS_MARKER) + TS_DIGITS <= len(buf):
            end = i + len(TS_MARKER) + TS_DIGITS
            try:
                lat_ms = (time.time_ns() - int(buf[i + len(TS_MARKER) : end])) / 1e6
                self._fire("event", lat_ms, TS_DIGITS, None)
            except ValueError:
                pass
            i = buf.find(TS_MARKER, end)
        if i >= 0:
            return buf[i:]
        return buf[max(end, len(buf) - len(TS_MARKER)) :]

    def _fire(self, name: str, ms: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="SSE", name=name, response_time=ms, response_length=length,
            exception=exc, context={},
        )  # fmt: skip


class Publisher(HttpUser):
    """Publishes timestamped events at --pub-rate per user."""

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        return float(constant_throughput(opts.pub_rate if opts else 10.0)(self))

    def on_start(self) -> None:
        _loopback(urlsplit(self.host or "http://127.0.0.1:8000").hostname or "")

    @task
    def publish(self) -> None:
        opts = self.environment.parsed_options
        channel = _channel(self)
        path = (opts.pub_path if opts else "/channels/{ch}/events").format(ch=channel)
        payload = f'{{"t":{time.time_ns()},"p":"locust"}}'
        body = payload if opts and opts.raw_payload else f'{{"data":{payload}}}'
        self.client.post(path, data=body, headers={"Content-Type": "application/json"}, name="publish")
