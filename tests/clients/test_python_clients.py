"""The hub under the Python SSE clients people use: httpx-sse and sseclient-py.

Neither reconnects by itself: the application keeps the last id it saw and
sends it as ``Last-Event-ID`` when it opens the stream again; both are shown.
Each client runs in a thread of its own, behind a :class:`CutProxy` that lets
the test see the hub's raw bytes (the greeting and the heartbeats the client
must swallow).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sseclient
from httpx_sse import connect_sse

from tests.clients.helpers import CutProxy, fresh, publish, publish_text, wait_subscribed
from tests.support.procs import HubProcess, wait_until

pytestmark = pytest.mark.integration

# A stream is quiet between events: httpx's default read timeout (5 s) would
# end it. No read timeout, or one longer than the hub's heartbeat interval.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)

HEARTBEAT_ON_WIRE = b"\r\n:\n\r\n"  # the heartbeat comment in its HTTP/1.1 chunk


@dataclass(frozen=True, slots=True)
class Got:
    """One event as a client library surfaced it."""

    type: str
    data: str
    id: str | None
    retry: int | None


Emit = Callable[[Got], None]


def run_httpx_sse(http: httpx.Client, url: str, headers: Mapping[str, str], emit: Emit, on_open: Any) -> None:
    with connect_sse(http, "GET", url, headers=dict(headers)) as source:
        on_open(source.response)
        for sse in source.iter_sse():
            emit(Got(sse.event, sse.data, sse.id, sse.retry))


def run_sseclient(http: httpx.Client, url: str, headers: Mapping[str, str], emit: Emit, on_open: Any) -> None:
    # sseclient-py parses any iterable of byte chunks; it is usually handed a
    # ``requests`` response, here httpx's, which yields chunks as they arrive.
    with http.stream("GET", url, headers={"Accept": "text/event-stream", **headers}) as response:
        on_open(response)
        for event in sseclient.SSEClient(response.iter_bytes()).events():
            retry = int(event.retry) if event.retry is not None else None
            emit(Got(event.event, event.data, event.id, retry))


Runner = Callable[[httpx.Client, str, Mapping[str, str], Emit, Any], None]
CLIENTS: dict[str, Runner] = {"httpx-sse": run_httpx_sse, "sseclient-py": run_sseclient}


class Reader:
    """One client library reading one stream in a thread, collecting its events."""

    def __init__(
        self,
        run: Runner,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = STREAM_TIMEOUT,
    ) -> None:
        self.events: list[Got] = []
        self.error: BaseException | None = None
        self.ended = False
        self._lock = threading.Lock()
        self._stopping = False
        self._socket: socket.socket | None = None
        self._opened = threading.Event()
        self._http = httpx.Client(timeout=timeout)
        self._thread = threading.Thread(
            target=self._main, args=(run, url, dict(headers or {})), name="sse-reader", daemon=True
        )
        self._thread.start()
        wait_until(lambda: self._opened.is_set() or self.ended, 10, f"the response of {url}")
        if self.error is not None:
            raise self.error

    def _on_open(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        stream = response.extensions["network_stream"]
        self._socket = stream.get_extra_info("socket")
        self._opened.set()

    def _emit(self, got: Got) -> None:
        with self._lock:
            self.events.append(got)

    def _main(self, run: Runner, url: str, headers: dict[str, str]) -> None:
        try:
            run(self._http, url, headers, self._emit, self._on_open)
        except BaseException as exc:
            if not self._stopping:
                self.error = exc
        finally:
            self.ended = True

    def got(self) -> list[Got]:
        with self._lock:
            return list(self.events)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Got]:
        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"the client failed: {self.error!r}") from self.error
            return len(self.got()) >= count

        wait_until(enough, timeout, f"{count} events (have {self.got()})")
        return self.got()

    def wait_error(self, timeout: float = 10.0) -> BaseException:
        wait_until(lambda: self.ended, timeout, "the client to fail")
        assert self.error is not None, f"the client ended without an error: {self.got()}"
        return self.error

    def close(self) -> None:
        self._stopping = True
        if self._socket is not None:
            # Wakes the thread blocked in recv(); its iteration then fails and unwinds.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the reader thread did not end"
        self._http.close()

    @property
    def last_id(self) -> str:
        """What an application keeps to resume: the id of the last event that had one."""
        return next(e.id for e in reversed(self.got()) if e.id)


@pytest.fixture(params=sorted(CLIENTS))
def run(request: pytest.FixtureRequest) -> Runner:
    return CLIENTS[str(request.param)]


@pytest.fixture
def proxy(hub_server: HubProcess) -> Iterator[CutProxy]:
    with CutProxy(hub_server.port) as p:
        yield p


def test_events_arrive_exactly_with_no_bogus_event(
    run: Runner, hub_server: HubProcess, proxy: CutProxy
) -> None:
    channel = fresh()
    reader = Reader(run, f"{proxy.url}/channels/{channel}/stream")
    try:
        wait_subscribed(hub_server.url, channel)
        # The greeting ("retry: 3000\n: ok\n", no blank line) and heartbeats,
        # before and between events, must never surface as an event.
        proxy.wait_downstream(1, b"retry: 3000\n: ok\n")
        proxy.wait_downstream(1, HEARTBEAT_ON_WIRE, times=2)
        payload = {"n": 1, "s": "é ✓ \u2028 sep"}  # U+2028 is no line break in SSE
        text = "line one\nline two\n\n  line four, indented\n"
        ids = [
            publish(hub_server.url, channel, payload),
            publish(hub_server.url, channel, [1, 2], event="update"),
            publish_text(hub_server.url, channel, text),
            publish_text(hub_server.url, channel, "  typed text, leading spaces", event="note"),
        ]
        reader.wait_for(4)
        heartbeats = proxy.downstream(1).count(HEARTBEAT_ON_WIRE)
        proxy.wait_downstream(1, HEARTBEAT_ON_WIRE, times=heartbeats + 2)
        ids.append(publish(hub_server.url, channel, "last"))
        events = reader.wait_for(5)
        # Nothing more: no empty event for a heartbeat or the end of a block.
        assert len(reader.got()) == 5
        assert [(e.type, e.data) for e in events] == [
            ("message", json.dumps(payload, separators=(",", ":"), ensure_ascii=False)),
            ("update", "[1,2]"),
            ("message", text),
            ("note", "  typed text, leading spaces"),
            ("message", '"last"'),
        ]
        assert [e.id for e in events] == ids
        assert json.loads(events[0].data) == payload
        # Quirk of both libraries: the greeting's "retry:" has no blank line
        # after it, so they report it on the first event's block (a browser
        # just sets its reconnection time).
        assert [e.retry for e in events] == [3000, None, None, None, None]
        assert all(e.data and e.type for e in events)
    finally:
        reader.close()


def test_resume_after_a_disconnect_with_last_event_id(run: Runner, hub_server: HubProcess) -> None:
    channel = fresh()
    url = f"{hub_server.url}/channels/{channel}/stream"
    first = Reader(run, url)
    try:
        wait_subscribed(hub_server.url, channel)
        ids = [publish(hub_server.url, channel, i) for i in range(3)]
        assert [e.data for e in first.wait_for(3)] == ["0", "1", "2"]
        last_id = first.last_id
        assert last_id == ids[2]
    finally:
        first.close()
    # Published while the application had no stream open.
    ids += [publish(hub_server.url, channel, i) for i in (3, 4)]
    second = Reader(run, url, {"Last-Event-ID": last_id})
    try:
        assert [e.data for e in second.wait_for(2)] == ["3", "4"]
        ids.append(publish(hub_server.url, channel, 5))
        events = second.wait_for(3)
        assert [e.data for e in events] == ["3", "4", "5"]
        assert [e.id for e in events] == ids[3:]
        assert len(second.got()) == 3
    finally:
        second.close()


def test_unknown_last_event_id_gets_a_gap_event_then_all_history(run: Runner, hub_server: HubProcess) -> None:
    channel = fresh()
    ids = [publish(hub_server.url, channel, i) for i in range(3)]
    reader = Reader(run, f"{hub_server.url}/channels/{channel}/stream", {"Last-Event-ID": "not-an-id"})
    try:
        events = reader.wait_for(4)
        gap = events[0]
        assert gap.type == "hub.gap"
        assert json.loads(gap.data) == {"channel": channel, "requested": "not-an-id", "oldest": ids[0]}
        # The gap event carries no id: httpx-sse reports "", sseclient-py None.
        assert not gap.id
        assert [(e.type, e.data, e.id) for e in events[1:]] == [("message", str(i), ids[i]) for i in range(3)]
    finally:
        reader.close()


def test_multi_channel_stream_and_its_cursor(run: Runner, hub_server: HubProcess) -> None:
    a, b = fresh("ma"), fresh("mb")
    url = f"{hub_server.url}/stream?channel={a}&channel={b}"
    first = Reader(run, url)
    try:
        wait_subscribed(hub_server.url, a)
        wait_subscribed(hub_server.url, b)
        publish(hub_server.url, a, {"x": 1})
        publish(hub_server.url, b, "y", event="update")
        events = first.wait_for(2)
        assert [(e.type, json.loads(e.data)) for e in events] == [
            ("message", {"channel": a, "data": {"x": 1}}),
            ("update", {"channel": b, "data": "y"}),
        ]
        cursor = first.last_id
        assert ":" not in cursor
        assert len(cursor) < 128
    finally:
        first.close()
    publish(hub_server.url, b, "missed on b")
    publish(hub_server.url, a, "missed on a")
    second = Reader(run, url, {"Last-Event-ID": cursor})
    try:
        events = second.wait_for(2)
        assert sorted(json.loads(e.data)["data"] for e in events) == ["missed on a", "missed on b"]
        publish(hub_server.url, a, "live")
        assert json.loads(second.wait_for(3)[2].data) == {"channel": a, "data": "live"}
        assert len(second.got()) == 3
    finally:
        second.close()


def test_read_timeout_must_outlast_the_heartbeat(
    run: Runner, hub_server: HubProcess, proxy: CutProxy
) -> None:
    """httpx's default timeout (5 s for every read) ends a quiet stream.

    The hub sends a heartbeat comment after ``HUB_HEARTBEAT_SECONDS`` (15 s by
    default; 0.4 s for this hub) of silence, so a read timeout shorter than
    that kills the stream, and a longer one holds (and still notices a dead
    connection). Scaled down here: 0.2 s fails, 1.5 s holds.
    """
    assert httpx.Client().timeout.read == 5.0  # the default a stream must not keep
    channel = fresh()
    url = f"{proxy.url}/channels/{channel}/stream"
    short = Reader(run, url, timeout=httpx.Timeout(10.0, read=0.2))
    try:
        assert isinstance(short.wait_error(), httpx.ReadTimeout)
        assert short.got() == []
    finally:
        short.close()
    held = Reader(run, url, timeout=httpx.Timeout(10.0, read=1.5))
    try:
        # 4 heartbeats: 2 s without an event, longer than the read timeout.
        proxy.wait_downstream(2, HEARTBEAT_ON_WIRE, times=4)
        assert held.error is None
        assert not held.ended
        publish(hub_server.url, channel, "still here")
        assert [e.data for e in held.wait_for(1)] == ['"still here"']
    finally:
        held.close()
