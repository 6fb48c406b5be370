"""The connection guards of :mod:`hub.http.protocol`, fed bytes through a fake transport."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from hub.http import protocol
from hub.http.protocol import HubHttpProtocol, protocol_class
from hub.http.routes import is_stream
from hub.http.types import Receive, Scope, Send

pytestmark = [pytest.mark.anyio]

STREAM = b"GET /channels/x/stream HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: HubHttpProtocol | None = None
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "written after close"
        assert not self.eof, "written after write_eof"
        self.written += data

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class App:
    """Streams park until the client goes (as the hub's do); other paths answer "ok"."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ended: list[str] = []
        self.refuse = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.calls.append(path)
        if is_stream(scope["method"], path) and self.refuse:
            body = b'{"error":"unavailable"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-length", b"%d" % len(body))],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if is_stream(scope["method"], path) or path == "/slow":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b": ok\n", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.ended.append(path)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Server:
    """One protocol class (one guard) and what its connections share."""

    def __init__(self, max_head: int = 65536, timeout: float = 10.0, reserve: int = 64) -> None:
        self.app = App()
        self.config = Config(app=self.app, log_level="warning")
        self.config.load()
        self.state = ServerState()
        self.cls = protocol_class(max_head, timeout, reserve)

    def connect(self) -> tuple[HubHttpProtocol, FakeTransport]:
        proto = self.cls(self.config, self.state, {}, asyncio.get_running_loop())
        transport = FakeTransport()
        transport.protocol = proto
        proto.connection_made(transport)
        return proto, transport


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def answers(written: bytes) -> list[int]:
    """The statuses of the responses written (bodies here never look like a status line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", written)]


def error_of(written: bytes) -> dict[str, str]:
    body = orjson.loads(written.split(b"\r\n\r\n", 1)[1])
    assert isinstance(body, dict)
    return body


async def test_a_request_pipelined_behind_a_stream_is_never_read_and_the_stream_ends_with_it() -> None:
    server = Server()
    proto, transport = server.connect()
    proto.data_received(STREAM + HEALTHZ)
    await until(lambda: b": ok" in transport.written)
    proto.data_received(HEALTHZ)  # more of it later: dropped too
    await asyncio.sleep(0)
    assert server.app.calls == ["/channels/x/stream"]
    assert len(server.state.tasks) == 1
    assert not proto.pipeline  # not even queued
    assert proto.cycle.scope["path"] == "/channels/x/stream"
    assert answers(bytes(transport.written)) == [200]
    assert b"connection" not in bytes(transport.written).lower()  # a stream's 200 has none
    assert not server.cls.guard.waiting  # no head timer once the stream is established
    proto.connection_lost(None)
    await until(lambda: server.app.ended == ["/channels/x/stream"])
    await until(lambda: not server.state.tasks)
    assert server.cls.guard.open == 0


async def test_a_refused_stream_closes_its_connection_and_answers_nothing_pipelined() -> None:
    server = Server()
    server.app.refuse = True
    proto, transport = server.connect()
    proto.data_received(STREAM + HEALTHZ)
    await until(lambda: transport.closing)
    assert answers(bytes(transport.written)) == [503]
    assert server.app.calls == ["/channels/x/stream"]


async def test_bytes_past_a_stream_head_beyond_the_limit_end_the_connection() -> None:
    server = Server(max_head=4096)
    proto, transport = server.connect()
    proto.data_received(STREAM)
    await until(lambda: b": ok" in transport.written)
    proto.data_received(b"x" * 4000)
    assert not transport.closing
    proto.data_received(b"x" * 200)
    assert transport.aborted
    await until(lambda: server.app.ended == ["/channels/x/stream"])


async def test_every_unanswered_request_learns_that_its_client_left() -> None:
    # Not a stream path, so uvicorn pipelines; the slow request must still see the disconnect.
    server = Server()
    proto, _ = server.connect()
    proto.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + HEALTHZ)
    await until(lambda: server.app.calls == ["/slow"])
    proto.connection_lost(None)
    await until(lambda: server.app.ended == ["/slow"])


@pytest.mark.parametrize("read", [1 << 20, 1000])
async def test_a_head_over_the_limit_gets_a_431_without_being_parsed(
    read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "LINGER_SECONDS", 0.2)
    server = Server(max_head=8192)
    proto, transport = server.connect()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    fed = 0
    while not transport.eof and fed < len(head):
        proto.data_received(head[fed : fed + read])
        fed += read
    assert fed <= 8192 + read  # it stopped being read at the limit
    assert answers(bytes(transport.written)) == [431]
    assert error_of(bytes(transport.written)) == {
        "error": "request_header_fields_too_large",
        "detail": "the request head exceeds 8192 bytes",
    }
    assert b"connection: close" in transport.written
    # The rest of what the client sends is dropped (it reads the answer, not a reset) ...
    assert not transport.closing
    proto.data_received(b"a" * 4096)
    assert server.app.calls == []
    # ... for a while, then the connection is closed.
    await until(lambda: transport.aborted, timeout=5)


async def test_a_long_url_gets_a_414() -> None:
    server = Server(max_head=8192)
    proto, transport = server.connect()
    proto.data_received(b"GET /" + b"a" * 5000)
    proto.data_received(b"a" * 5000)
    assert answers(bytes(transport.written)) == [414]
    assert error_of(bytes(transport.written))["error"] == "request_uri_too_long"


async def test_heads_under_the_limit_pass_however_they_are_cut() -> None:
    server = Server(max_head=8192)
    # One head just under the limit, byte by byte in places ...
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 8000 + b"\r\n\r\n"
    assert len(head) < 8192
    proto, transport = server.connect()
    for i in range(0, len(head), 1000):
        proto.data_received(head[i : i + 1000])
    await until(lambda: b"ok" in transport.written)
    # ... and many small pipelined ones in one read far over the limit.
    proto, transport = server.connect()
    proto.data_received(HEALTHZ * 1000)
    await until(lambda: answers(bytes(transport.written)) == [200] * 1000)
    # A terminator cut across reads, with more behind it.
    proto, transport = server.connect()
    proto.data_received(head[:-2])
    proto.data_received(b"\r\n" + HEALTHZ * 400)
    await until(lambda: answers(bytes(transport.written)) == [200] * 401)


async def test_a_head_that_does_not_arrive_in_time_gets_a_408_and_idle_connections_are_closed() -> None:
    server = Server(timeout=0.2)
    slow, slow_t = server.connect()
    _, idle_t = server.connect()
    quick, quick_t = server.connect()
    start = time.monotonic()
    slow.data_received(b"GET /healthz HTTP/1.1\r\nHo")
    quick.data_received(HEALTHZ)
    await until(lambda: slow_t.closing and idle_t.closing)
    assert time.monotonic() - start >= 0.2
    assert answers(bytes(slow_t.written)) == [408]
    assert error_of(bytes(slow_t.written))["error"] == "request_timeout"
    assert idle_t.written == b""
    assert not quick_t.closing  # it sent its head in time (uvicorn's keep-alive timer has it now)
    # A keep-alive connection's next request is timed from its first byte.
    quick.data_received(b"GET /healthz HTTP/1.1\r\n")
    await until(lambda: quick_t.closing)
    assert answers(bytes(quick_t.written)) == [200, 408]
    await until(lambda: server.cls.guard.open == 0)
    assert not server.cls.guard.waiting


async def test_idle_keep_alive_connections_are_closed_by_the_sweep_not_a_timer_per_response() -> None:
    server = Server(timeout=0.2)
    once, once_t = server.connect()
    busy, busy_t = server.connect()
    guard = server.cls.guard
    assert guard.keep_alive == server.config.timeout_keep_alive  # uvicorn's setting (whole seconds)
    guard.keep_alive = 0.4
    start = time.monotonic()
    once.data_received(HEALTHZ)
    busy.data_received(HEALTHZ)
    await until(lambda: answers(bytes(once_t.written)) == [200] and answers(bytes(busy_t.written)) == [200])
    assert once.timeout_keep_alive_task is None  # no timer armed per response
    # busy keeps asking: its clock restarts with each answer; once's runs out.
    while time.monotonic() - start < 0.6:
        busy.data_received(HEALTHZ)
        await asyncio.sleep(0.05)
    await until(lambda: once_t.closing)
    assert time.monotonic() - start >= 0.4
    assert not busy_t.closing
    last = time.monotonic()
    await until(lambda: busy_t.closing)
    assert time.monotonic() - last >= 0.3  # from its last answer, not its first
    assert set(answers(bytes(busy_t.written))) == {200}
    await until(lambda: guard.open == 0)
    assert not guard.idle


async def test_near_the_fd_limit_the_oldest_connections_without_a_request_make_room(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (8, 8))
    server = Server(reserve=4)  # room for 4 connections
    with caplog.at_level(logging.WARNING, logger="hub.http.protocol"):
        streams = [server.connect() for _ in range(2)]
        for proto, _ in streams:
            proto.data_received(STREAM)
        _, first_t = server.connect()
        second, second_t = server.connect()
        assert not first_t.closing
        # A fifth: the oldest that sent no request goes, never a stream.
        third, third_t = server.connect()
        assert first_t.closing
        assert not second_t.closing
        assert not third_t.closing
        assert all(not t.closing for _, t in streams)
        assert "open-file limit reached" in caplog.text
        # The newcomer is served.
        third.data_received(HEALTHZ)
        await until(lambda: b"ok" in third_t.written)
        # With nothing left to close, a newcomer is refused.
        second.data_received(STREAM)
        third.data_received(STREAM)
        _, last_t = server.connect()
        assert last_t.closing
        assert last_t.written == b""
    guard = server.cls.guard
    assert (guard.evicted, guard.refused) == (1, 1)
    await until(lambda: guard.open == 4)


async def test_flow_control_makes_its_event_only_when_a_writer_waits() -> None:
    from hub.http.protocol import LazyFlowControl

    flow = LazyFlowControl(FakeTransport())
    await flow.drain()  # writable: returns at once, and nothing was made for it
    assert flow._writable is None
    flow.pause_writing()
    waiter = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)  # let it start waiting (an event is made now)
    assert not waiter.done()
    assert flow._writable is not None
    flow.resume_writing()
    await asyncio.wait_for(waiter, 1)
    flow.pause_writing()
    flow.resume_writing()
    await asyncio.wait_for(flow.drain(), 1)


async def test_a_stream_connection_keeps_nothing_it_needed_only_for_parsing() -> None:
    server = Server()
    proto, transport = server.connect()
    assert proto.flow._writable is None  # type: ignore[attr-defined]
    proto.data_received(STREAM + HEALTHZ)
    await until(lambda: b": ok" in transport.written)
    assert proto.parser is None
    assert proto.pipeline == ()
    proto.data_received(HEALTHZ)  # dropped, as before
    transport.close()
    await until(lambda: server.app.ended == ["/channels/x/stream"])
