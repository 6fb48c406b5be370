"""The connection level, under ASGI: uvicorn's httptools protocol with guards.

ASGI sees requests, not connections, so what a client does to a connection
is guarded here, in :class:`HubHttpProtocol` (a subclass of uvicorn's
``HttpToolsProtocol``), passed to uvicorn by :func:`hub.server.uvicorn_config`:

* **Streams own their connection.** Once a stream's request head is parsed,
  the parser is stopped: whatever the client sends after it on that
  connection (a pipelined request, say) is read and dropped, never handed to
  uvicorn, so no later request can take the stream's place and hide the
  client going away; a refused or failed stream closes its connection when
  its response is complete. Past ``HUB_MAX_HEADER_BYTES`` of such bytes the
  connection is closed.
* **Request heads are bounded in size**: past ``HUB_MAX_HEADER_BYTES`` the
  client gets a JSON 414 (request line) or 431 (headers) and the connection
  is closed, before the parser buffers more.
* **and in time**: a connection whose request head has not fully arrived
  within ``HUB_HEADER_TIMEOUT`` of connecting (or of the first byte of a
  keep-alive connection's next request) is closed, with a 408 if it sent
  part of one. One sweep per server does this; no per-connection timer.
* **Idle keep-alive connections** are closed after uvicorn's ``timeout_keep_alive`` by the same
  sweep, not by a timer per response (uvicorn arms and cancels one per request: about 1 us of
  every publish).
* **File descriptors are rationed**: when open connections reach the
  open-file limit less a reserve, the oldest connections that have not sent
  a request head (then idle keep-alives) are closed to make room, so that
  ``/healthz`` and ``/metrics`` still get in; a new connection is refused
  only when there is nothing to close. Logged at most once a minute.

Nothing here runs per delivery: a stream's bytes are written by
:class:`~hub.http.sinks.TransportSink` straight to the transport.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
import urllib.parse
from collections.abc import Awaitable
from typing import Any, ClassVar, Protocol, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from hub.core.throttle import Throttle
from hub.http.errors import error_body, error_name
from hub.http.routes import is_stream

log = logging.getLogger(__name__)

# Where the parser is in the connection's current request.
_IDLE, _HEAD, _BODY, _GONE = 0, 1, 2, 3
# After a 414/431 the client may still be sending its oversized head: read and
# drop this much of it for this long, so that it reads the answer instead of
# a reset, then close.
LINGER_BYTES = 1 << 20
LINGER_SECONDS = 2.0
# Warn from this fraction of the connection ceiling.
NEAR_FRACTION = 0.9
LOG_EVERY_SECONDS = 60.0


class LazyFlowControl(FlowControl):
    """uvicorn's flow control, its :class:`asyncio.Event` made only when a writer has to
    wait for the transport to drain: a connection that never waits (nearly every stream and
    publish) saves the event and its deque, some 750 bytes."""

    def __init__(self, transport: asyncio.Transport) -> None:  # no super(): it makes the event
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Event | None = None

    async def drain(self) -> None:
        if self.write_paused:
            if self._writable is None:
                self._writable = asyncio.Event()
            await self._writable.wait()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self._writable is not None:
                self._writable.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self._writable is not None:
                self._writable.set()


# The pipeline of a stream's connection once its head is parsed: nothing is queued behind
# a stream (later bytes are dropped), so an empty tuple stands in for uvicorn's deque.
_NO_PIPELINE: Any = ()


class _StreamStarted(Exception):
    """Raised from the parser's callback to stop parsing behind a stream's head."""


class ConnectionGuard:
    """What one server's connections share: the head timer and the fd ration."""

    def __init__(self, max_head_bytes: int, header_timeout: float, fd_reserve: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.header_timeout = header_timeout
        self.fd_reserve = fd_reserve
        self.open = 0
        # Connections whose request head has begun (or that sent nothing yet), oldest
        # first, with when it began; idle keep-alives, since when; closing after a 414/431.
        self.waiting: dict[HubHttpProtocol, float] = {}
        self.idle: dict[HubHttpProtocol, float] = {}
        self.keep_alive = 5.0  # uvicorn's timeout_keep_alive, set by the first connection
        self.lingering: dict[HubHttpProtocol, float] = {}
        self.nofile: int | None = None
        self.ceiling = sys.maxsize
        self.near = sys.maxsize
        self.timed_out = 0
        self.too_large = 0
        self.evicted = 0
        self.refused = 0
        self.invalid = Throttle(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._period = min(1.0, max(0.05, header_timeout / 4))
        self._logged: dict[str, float] = {}

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            self.nofile = soft
            self.ceiling = max(1, soft - self.fd_reserve)
            self.near = max(1, int(self.ceiling * NEAR_FRACTION))

    def admit(self, proto: HubHttpProtocol) -> None:
        if self._loop is None:
            self._start(proto.loop)
            self.keep_alive = proto.timeout_keep_alive
        self.open += 1
        self.waiting[proto] = time.monotonic()
        self.arm()
        if self.open >= self.near:
            self._crowded(proto)

    def forget(self, proto: HubHttpProtocol) -> None:
        self.waiting.pop(proto, None)
        self.idle.pop(proto, None)
        self.lingering.pop(proto, None)
        if proto.phase != _GONE:
            proto.phase = _GONE
            self.open -= 1

    def linger(self, proto: HubHttpProtocol) -> None:
        self.waiting.pop(proto, None)
        self.lingering[proto] = time.monotonic() + LINGER_SECONDS
        self.arm()

    def rest(self, proto: HubHttpProtocol) -> None:
        """``proto`` answered its last request and waits for the next: its keep-alive clock starts."""
        idle = self.idle
        idle.pop(proto, None)  # to the end: the dict stays in the order they went idle
        idle[proto] = time.monotonic()
        if self._timer is None:
            self.arm()

    def arm(self) -> None:
        if self._timer is None and self._loop is not None and (self.waiting or self.lingering or self.idle):
            self._timer = self._loop.call_later(self._period, self.sweep)

    def sweep(self) -> None:
        """Close the connections past their head deadline, and the lingering ones."""
        self._timer = None
        now = time.monotonic()
        expired = _due(self.waiting, now - self.header_timeout)
        for proto in expired:
            proto.head_timed_out()
        if expired:
            self.timed_out += len(expired)
            self._log_once(
                "timeout",
                logging.INFO,
                "closed %d connection(s) so far that sent no complete request head within %g s "
                "(HUB_HEADER_TIMEOUT)",
                self.timed_out,
                self.header_timeout,
            )
        for proto in _due(self.lingering, now):
            self.forget(proto)
            proto.transport.abort()
        for proto in _due(self.idle, now - self.keep_alive):
            self.forget(proto)
            proto.transport.close()
        self.arm()

    def _crowded(self, newcomer: HubHttpProtocol) -> None:
        if self.open <= self.ceiling:
            self._log_once(
                "near",
                logging.WARNING,
                "%d open connections, near the %d the open-file limit (%s) allows with a reserve of %d; "
                "raise it (ulimit -n, LimitNOFILE=)",
                self.open,
                self.ceiling,
                self.nofile,
                self.fd_reserve,
            )
            return
        victim = next(iter(self.waiting), newcomer)
        if victim is newcomer:
            victim = next(iter(self.idle), newcomer)
        if victim is newcomer:
            self.refused += 1
        else:
            self.evicted += 1
        self.forget(victim)
        victim.transport.close()
        self._log_once(
            "full",
            logging.WARNING,
            "open-file limit reached: %d open connections, the %d the limit (%s) allows with a reserve "
            "of %d; so far closed %d connection(s) that had sent no request and refused %d new one(s)",
            self.open + 1,
            self.ceiling,
            self.nofile,
            self.fd_reserve,
            self.evicted,
            self.refused,
        )

    def note_too_large(self) -> None:
        self.too_large += 1
        self._log_once(
            "large",
            logging.INFO,
            "refused %d request(s) so far whose head exceeded %d bytes (HUB_MAX_HEADER_BYTES)",
            self.too_large,
            self.max_head_bytes,
        )

    def _log_once(self, key: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[key] = now
            log.log(level, message, *args)


def _due(clock: dict[HubHttpProtocol, float], bound: float) -> list[HubHttpProtocol]:
    """The connections at the front of ``clock`` (kept in the order of its times) whose time
    is at most ``bound``: only those are looked at."""
    due = []
    for proto, at in clock.items():
        if at > bound:
            break
        due.append(proto)
    return due


# A whole answer: status, headers (but content-length), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class AnswersNow(Protocol):
    """The app's side of answering a publish in the connection itself (the HubApp): the
    whole answer, or an awaitable of it when the broker must wait."""

    body_limit: int

    def takes_now(self, path: str) -> dict[str, str] | None: ...

    def answer_now(self, scope: dict[str, Any], body: bytes | None) -> Answer | Awaitable[Answer]: ...


class _Pending:
    """Stands for uvicorn's request cycle while a publish is answered later: not complete,
    so uvicorn queues the connection's next request behind it; the attributes uvicorn
    reads of a cycle (on a lost connection, a shutdown, a keep-alive timeout)."""

    __slots__ = ("disconnected", "keep_alive", "message_event", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive  # a shutdown sets it False: the connection closes after
        self.message_event = _NO_EVENT


class _NoEvent:
    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


def _internal_error(scope: dict[str, Any]) -> Answer:
    log.exception("publish to %s failed", scope.get("path"))
    body = error_body("internal_error", "the hub failed to handle this request; it is logged")
    return 500, [(b"content-type", b"application/json")], body


class HubHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the connection guards; see the module docstring."""

    # Slots: uvicorn's protocol already has 28 attributes, and past 30 an instance's
    # dict stops sharing its keys and costs some 1.3 KB more per connection.
    __slots__ = ("discard", "earlier", "head_bytes", "now_body", "now_out", "now_scope", "now_size", "phase")

    guard: ClassVar[ConnectionGuard]
    # The app, when publishes are answered here (no access log, a broker that never waits).
    now: ClassVar[AnswersNow | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.phase = _IDLE
        # Bytes of the current request head seen in earlier reads (a lower bound).
        self.head_bytes = 0
        # None while requests are parsed; once parsing stopped, bytes left to drop.
        self.discard: int | None = None
        # Cycles a pipelined request displaced from ``self.cycle`` before they completed.
        self.earlier: list[RequestResponseCycle] | None = None
        # A publish being answered here (see _take_now): its scope, body, and size.
        self.now_scope: dict[str, Any] | None = None
        self.now_body: list[bytes] = []
        self.now_size = 0
        # Answers written at the end of the current read (None outside data_received).
        self.now_out: list[bytes] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = LazyFlowControl(transport)
        self.guard.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        # Every request of this connection not yet answered learns that its client left,
        # not only the latest one.
        for cycle in [*(self.earlier or ()), *(cycle for cycle, _ in self.pipeline)]:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discard is not None:
            self.discard -= len(data)
            if self.discard < 0:
                self.guard.forget(self)
                self.transport.abort()
            return
        self._unset_keepalive_if_required()
        phase = self.phase
        known = 0
        if phase != _BODY:
            # These bytes begin or continue a request head: refuse it before the
            # parser buffers it, when it cannot end within the limit.
            known = self.head_bytes if phase == _HEAD else 0
            room = self.guard.max_head_bytes - known
            if (
                len(data) > room
                and data.find(b"\r\n\r\n", 0, room) < 0
                and not (known and b"\n" in data[:3])  # a terminator split across reads
            ):
                self._too_large(data, room, known)
                return
        self.head_bytes = -1  # on_headers_complete sets 0
        # Publishes answered here during this read go out together, in one write.
        self.now_out = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._write_now()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._write_now()
            if self.discard is not None:
                # A stream's head (see on_headers_complete): this connection parses nothing
                # more, so what only parsing needs goes (memory per stream: about 1.7 KB).
                self.parser = None
                if not self.pipeline:
                    self.pipeline = _NO_PIPELINE
                return
            message = "Invalid HTTP request received."
            # A client can send garbage as fast as it likes: one line a minute, counted.
            self.guard.invalid.hit("invalid HTTP requests received, answered 400")
            self.send_400_response(message)
            return
        self._write_now()
        if self.phase == _HEAD:
            # A head still incomplete: all of this read is its if it was already under way
            # and none completed meanwhile; otherwise where it began is unknown, and it is
            # counted from the next read (so the parser holds at most one read more).
            self.head_bytes = known + len(data) if self.head_bytes < 0 and phase != _BODY else 0
            guard = self.guard
            if self not in guard.waiting:  # its clock starts with its first bytes
                guard.waiting[self] = time.monotonic()
                guard.arm()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = _HEAD
        # A head that completes within this read never waits: data_received puts
        # the connection on the head clock only if the head is still incomplete.
        self.guard.idle.pop(self, None)

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.head_bytes = 0
        self.guard.waiting.pop(self, None)
        if self.now is not None and self._take_now(self.now):
            return
        earlier = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is earlier:
            return  # an upgrade: uvicorn hands the connection over
        if earlier is not None and not earlier.response_complete:
            self.earlier = [c for c in (self.earlier or ()) if not c.response_complete]
            self.earlier.append(earlier)
        scope = self.scope
        if is_stream(scope["method"], scope["path"]):
            # A stream: nothing after it on this connection is a request, and the
            # connection ends with its response (see on_response_complete).
            self.discard = self.guard.max_head_bytes
            raise _StreamStarted

    def on_body(self, body: bytes) -> None:
        if self.now_scope is None:
            super().on_body(body)
            return
        self.now_size += len(body)
        if self.now is not None and self.now_size <= self.now.body_limit:
            self.now_body.append(body)  # past the limit nothing more is kept: a 413

    def on_message_complete(self) -> None:
        scope = self.now_scope
        if scope is None:
            super().on_message_complete()
            self.phase = _IDLE
            return
        self.phase = _IDLE
        self.now_scope = None
        chunks, self.now_body = self.now_body, []
        assert self.now is not None
        body = None if self.now_size > self.now.body_limit else b"".join(chunks)
        self._answer_now(self.now, scope, body)

    # Publishes answered here

    def _take_now(self, now: AnswersNow) -> bool:
        """Take this request out of uvicorn's hands when it is a publish the app answers
        at once: no ASGI cycle, no task, no ASGI messages (about half of what a
        publish cost), and pipelined publishes are answered in the read that brought them."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.expect_100_continue or self.root_path:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # an earlier request is still being answered: keep the order
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        params = now.takes_now(path)
        if params is None:
            return False
        scope = cast(dict[str, Any], self.scope)
        scope["path_params"] = params
        scope["method"] = "POST"
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["path"] = path
        scope["raw_path"] = parsed.path
        scope["query_string"] = parsed.query or b""
        self.now_scope = scope
        self.now_size = 0
        return True

    def _answer_now(self, now: AnswersNow, scope: dict[str, Any], body: bytes | None) -> None:
        keep_alive = scope["http_version"] != "1.0" and self.parser.should_keep_alive()
        try:
            answer = now.answer_now(scope, body)
        except Exception:  # a bug: the client gets the hub's JSON 500, the connection lives on
            answer = _internal_error(scope)
        if isinstance(answer, tuple):
            self._write_answer(answer, keep_alive)
            return
        # The broker must wait (Redis): one task for the publish, and a placeholder cycle so
        # that uvicorn queues whatever comes next on this connection behind it, in order.
        pending = _Pending(keep_alive)
        self.cycle = cast(RequestResponseCycle, pending)  # only the attributes it reads
        task = self.loop.create_task(self._answer_later(pending, scope, answer))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # a graceful shutdown waits for it, as for an ASGI request

    async def _answer_later(
        self, pending: _Pending, scope: dict[str, Any], answer: Awaitable[Answer]
    ) -> None:
        try:
            done = await answer
        except Exception:
            done = _internal_error(scope)
        pending.response_complete = True
        if pending.disconnected or self.transport.is_closing():
            return
        self._write_answer(done, pending.keep_alive)

    def _write_answer(self, answer: Answer, keep_alive: bool) -> None:
        status, headers, out = answer
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(out))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", out)
        if self.now_out is not None and keep_alive:
            self.now_out += parts
        else:
            self._write_now()
            self.transport.write(b"".join(parts))
        if not keep_alive:
            self.guard.forget(self)
            self.transport.close()
            return
        self.on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses gets the hub's JSON error shape, like every other."""
        body = error_body("bad_request", f"{msg} (malformed request line or headers)")
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _write_now(self) -> None:
        """Write the answers gathered during this read (pipelined publishes: one write)."""
        out = self.now_out
        self.now_out = None
        if out:
            self.transport.write(b"".join(out))

    def on_response_complete(self) -> None:
        """uvicorn's, but for the keep-alive timer: the guard's sweep closes idle connections."""
        transport = self.transport
        if self.discard is not None and not self.pipeline:
            # The stream's own response completed (refused, or failed before it began):
            # close, as nothing after it was read. No "Connection: close" in the
            # head: a stream's 200 must not carry one (HTTP/2 proxies, browsers).
            transport.close()
        self.server_state.total_requests += 1
        if transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a request read meanwhile waits for this one: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.guard.rest(self)

    def handle_websocket_upgrade(self) -> None:
        self.guard.forget(self)  # another protocol takes the connection
        super().handle_websocket_upgrade()

    # The guards' actions

    def head_timed_out(self) -> None:
        self.guard.waiting.pop(self, None)
        if self.phase == _HEAD:
            self._answer(408, "the request head did not arrive in time", linger=False)
        else:
            self.guard.forget(self)
            self.transport.close()

    def _too_large(self, data: bytes, room: int, known: int) -> None:
        # Still in the request line (the URL) or past it (the headers)?
        in_line = data.find(b"\n", 0, room) < 0 and (not known or len(self.url) + 16 >= known)
        limit = self.guard.max_head_bytes
        self.guard.note_too_large()
        if in_line:
            self._answer(414, f"the request line exceeds {limit} bytes", linger=True)
        else:
            self._answer(431, f"the request head exceeds {limit} bytes", linger=True)

    def _answer(self, status: int, detail: str, linger: bool) -> None:
        """A JSON error, then the connection ends (unless a response is under way: just close)."""
        transport = self.transport
        if self.cycle is not None and not self.cycle.response_complete:
            self.guard.forget(self)
            transport.close()
            return
        body = error_body(error_name(status), detail)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        transport.write(b"".join(head) + body)
        if linger and transport.can_write_eof():
            # Half-close and keep reading (and dropping) for a while, so the client,
            # perhaps still sending, reads this answer rather than a reset.
            transport.write_eof()
            self.discard = LINGER_BYTES
            self.guard.linger(self)
            return
        self.guard.forget(self)
        transport.close()


def protocol_class(max_head_bytes: int, header_timeout: float, fd_reserve: int) -> type[HubHttpProtocol]:
    """A protocol class for one server, with its own :class:`ConnectionGuard`."""

    class ServerProtocol(HubHttpProtocol):
        __slots__ = ()
        guard = ConnectionGuard(max_head_bytes, header_timeout, fd_reserve)

    return ServerProtocol
