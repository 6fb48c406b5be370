"""What the client tests share: publishing, channel names, and a TCP proxy that cuts.

Everything is synchronous (the clients under test are threads, subprocesses
or a browser); waits poll with a deadline through ``wait_until``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from tests.support.procs import wait_until

T = TypeVar("T")


def fresh(prefix: str = "cl") -> str:
    """A channel name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def publish(base: str, channel: str, data: Any, event: str | None = None) -> str:
    """Publish a JSON event; returns its id."""
    body: dict[str, Any] = {"data": data}
    if event is not None:
        body["event"] = event
    response = httpx.post(f"{base}/channels/{channel}/events", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def publish_text(base: str, channel: str, text: str, event: str | None = None) -> str:
    """Publish a ``text/plain`` event (the text is the data, newlines and all)."""
    response = httpx.post(
        f"{base}/channels/{channel}/events",
        content=text.encode(),
        params={"event": event} if event else None,
        headers={"content-type": "text/plain; charset=utf-8"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


MIX_TEXT = "first line\n\n  third line, indented\n"


def publish_mix(base: str, channel: str) -> list[str]:
    """What every EventSource-like client is shown: JSON, typed JSON, multi-line
    text, a type nobody listens to, typed text. Returns the five ids."""
    return [
        publish(base, channel, {"n": 1, "s": "é ✓"}),
        publish(base, channel, [1, 2], event="update"),
        publish_text(base, channel, MIX_TEXT),
        publish(base, channel, "nobody listens", event="other"),
        publish_text(base, channel, "typed text", event="update"),
    ]


def subscribers(base: str, channel: str) -> int:
    listing = httpx.get(f"{base}/channels", params={"prefix": channel}, timeout=10).json()["channels"]
    return next((int(c["subscribers"]) for c in listing if c["channel"] == channel), 0)


def wait_subscribed(base: str, channel: str, count: int = 1, timeout: float = 10.0) -> None:
    """Until the hub holds ``count`` streams of ``channel``: a live-only event
    published after this reaches all of them."""
    wait_until(lambda: subscribers(base, channel) >= count, timeout, f"{count} subscriber(s) of {channel}")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One HTTP request seen by the proxy (names lower-cased)."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]


_HEAD_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")


def parse_head(connection: int, head: bytes) -> RequestHead | None:
    lines = head.split(b"\r\n")
    match = _HEAD_LINE.match(lines[0])
    if match is None:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return RequestHead(connection, match.group(1).decode(), match.group(2).decode(), headers)


@dataclass(eq=False)
class _Conn:
    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    downstream: bytearray = field(default_factory=bytearray)


class CutProxy:
    """A TCP proxy between a client and the hub, in a thread of its own.

    It records every request head the clients send (it assumes requests
    without bodies: GET, HEAD, OPTIONS, which is all an EventSource sends) and
    every byte the hub sends back, per connection.

    ``cut()`` drops every forwarded connection at once (a TCP reset, as when a
    network path dies) and, by default, *holds* new connections: they are
    accepted and their request recorded, but not forwarded until
    ``release()``. So a test can publish while a client is surely
    disconnected, see it try to come back (with which ``Last-Event-ID``),
    and then let it in.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.requests: list[RequestHead] = []
        self._conns: dict[int, _Conn] = {}
        self._all: list[_Conn] = []
        self._count = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cut-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CutProxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        assert self._open is not None
        self._server.close()
        self._open.set()
        for conn in list(self._conns.values()):
            self._abort(conn)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    # -- what a test calls ---------------------------------------------------

    def cut(self, hold: bool = True) -> int:
        """Reset every forwarded connection; returns how many. With ``hold``,
        later connections wait for ``release()``."""

        async def run() -> int:
            assert self._open is not None
            if hold:
                self._open.clear()
            cut = [c for c in self._conns.values() if c.upstream is not None]
            for conn in cut:
                self._abort(conn)
            return len(cut)

        return self._call(run())

    def hold(self) -> None:
        """Hold new connections (until ``release()``), leaving open ones be."""

        async def run() -> None:
            assert self._open is not None
            self._open.clear()

        self._call(run())

    def release(self) -> None:
        async def run() -> None:
            assert self._open is not None
            self._open.set()

        self._call(run())

    def heads(self, method: str | None = None) -> list[RequestHead]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def downstream(self, connection: int) -> bytes:
        """What the hub sent on that connection so far."""
        with self._lock:
            return bytes(self._all[connection - 1].downstream)

    def wait_requests(self, count: int, timeout: float = 10.0, method: str = "GET") -> list[RequestHead]:
        wait_until(lambda: len(self.heads(method)) >= count, timeout, f"{count} {method} request(s)")
        return self.heads(method)

    def wait_downstream(self, connection: int, needle: bytes, times: int = 1, timeout: float = 10.0) -> None:
        wait_until(
            lambda: self.downstream(connection).count(needle) >= times,
            timeout,
            f"{needle!r} x{times} from the hub on connection {connection}",
        )

    # -- the proxy itself ----------------------------------------------------

    @staticmethod
    def _abort(conn: _Conn) -> None:
        for writer in (conn.client, conn.upstream):
            if writer is not None:
                writer.transport.abort()

    def _record(self, number: int, head: bytes) -> None:
        parsed = parse_head(number, head)
        if parsed is not None:
            with self._lock:
                self.requests.append(parsed)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        with self._lock:
            self._count += 1
            conn = _Conn(self._count, writer)
            self._all.append(conn)
        self._conns[conn.number] = conn
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self._record(conn.number, head[:-4])
            await self._open.wait()
            if writer.transport.is_closing():
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            conn.upstream = up_writer
            up_writer.write(head)
            pumps = [
                asyncio.ensure_future(self._requests(conn, reader, up_writer)),
                asyncio.ensure_future(self._responses(conn, up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.pop(conn.number, None)
            for w in (writer, conn.upstream):
                if w is not None and not w.transport.is_closing():
                    w.close()

    async def _requests(self, conn: _Conn, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        buffer = b""
        while data := await reader.read(65536):
            up.write(data)
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                self._record(conn.number, head)

    async def _responses(self, conn: _Conn, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await up.read(65536):
            with self._lock:
                conn.downstream.extend(data)
            writer.write(data)
            await writer.drain()
