"""The hub under a real browser's EventSource: headless Chromium (Debian's).

A page served from its own origin (``tests/clients/browser/``, a local HTTP
server on another port) opens cross-origin EventSources to the hub through a
:class:`CutProxy`, and records what they report in a JS array; the test
drives the page and reads the array over the Chrome DevTools Protocol (a
websocket, with the ``websockets`` package). The proxy shows every request
the browser makes (its ``Origin``, its ``Last-Event-ID``, any CORS preflight)
and cuts connections to make the browser reconnect by itself.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.clients.conftest import RETRY_MS
from tests.clients.helpers import (
    MIX_TEXT,
    CutProxy,
    fresh,
    publish,
    publish_mix,
    wait_subscribed,
)
from tests.support.procs import HubProcess, require_binary, wait_until

pytestmark = pytest.mark.integration

PAGE_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's websocket."""

    def __init__(self, ws_url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(ws_url, max_size=None, open_timeout=10))
        self._ids = itertools.count(1)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=10))
            if reply.get("id") == number:  # anything else is an event nobody asked for
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        self._stack.close()


class Page:
    def __init__(self, devtools: DevTools, url: str) -> None:
        self.devtools = devtools
        self.target = devtools.call("Target.createTarget", {"url": url})["targetId"]
        self.session = devtools.call("Target.attachToTarget", {"targetId": self.target, "flatten": True})[
            "sessionId"
        ]
        wait_until(lambda: self.js("window.pageReady === true") is True, 10, f"the test page {url}")

    def js(self, expression: str) -> Any:
        result = self.devtools.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open_stream(self, name: str, url: str, *types: str) -> None:
        assert self.js(f"openStream({json.dumps(name)}, {json.dumps(url)}, {json.dumps(list(types))})")

    def log(self, name: str, *kinds: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.js(f"readLog({json.dumps(name)})")
        return [r for r in records if not kinds or r["kind"] in kinds]

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.log(name, "message", "typed")

    def wait(self, name: str, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.log(name, kind)) >= count, timeout, f"{count} {kind!r} on {name}")
        return self.log(name, kind)

    def wait_events(self, name: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(
            lambda: len(self.events(name)) >= count,
            timeout,
            f"{count} events on {name} (have {self.log(name)})",
        )
        return self.events(name)

    def close(self) -> None:
        self.devtools.call("Target.closeTarget", {"targetId": self.target})


class Chromium:
    def __init__(self, binary: str) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="hub-chromium-"))
        self.log_path = self.profile.parent / (self.profile.name + ".log")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        active = self.profile / "DevToolsActivePort"

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}:\n{self.log()}")
            return active.exists() and len(active.read_text().splitlines()) == 2

        wait_until(listening, 30, "chromium's DevTools port")
        port, path = active.read_text().splitlines()
        self.devtools = DevTools(f"ws://127.0.0.1:{port}{path}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        try:
            self.devtools.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def page_origin() -> Iterator[str]:
    """The test page's origin: a static server on its own port."""
    handler = functools.partial(_Quiet, directory=str(PAGE_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    browser = Chromium(require_binary("chromium"))
    yield browser
    browser.close()


@pytest.fixture
def page(chromium: Chromium, page_origin: str) -> Iterator[Page]:
    p = Page(chromium.devtools, f"{page_origin}/index.html")
    yield p
    p.close()


@pytest.fixture
def proxy(fast_hub: HubProcess) -> Iterator[CutProxy]:
    with CutProxy(fast_hub.port) as p:
        yield p


def test_typed_untyped_and_multiline_events_cross_origin(
    page: Page, page_origin: str, fast_hub: HubProcess, proxy: CutProxy
) -> None:
    channel = fresh()
    page.open_stream("s", f"{proxy.url}/channels/{channel}/stream", "update")
    page.wait("s", "open")
    wait_subscribed(fast_hub.url, channel)
    first = proxy.heads("GET")[0]
    assert first.headers["origin"] == page_origin  # a cross-origin request...
    assert first.headers["accept"] == "text/event-stream"
    assert b"access-control-allow-origin: *\r\n" in proxy.downstream(1)  # ...that CORS lets through
    ids = publish_mix(fast_hub.url, channel)
    page.wait_events("s", 4)
    beats = proxy.downstream(1).count(b"\r\n:\n\r\n")
    proxy.wait_downstream(1, b"\r\n:\n\r\n", times=beats + 2)
    ids.append(publish(fast_hub.url, channel, "last"))
    events = page.wait_events("s", 5)
    assert [(e["kind"], e["type"], e["data"], e["lastEventId"]) for e in events] == [
        ("message", "message", '{"n":1,"s":"é ✓"}', ids[0]),
        ("typed", "update", "[1,2]", ids[1]),
        ("message", "message", MIX_TEXT, ids[2]),
        ("typed", "update", "typed text", ids[4]),
        ("message", "message", '"last"', ids[5]),
    ]
    assert {e["origin"] for e in events} == {proxy.url}
    assert len(page.events("s")) == 5
    assert page.log("s", "error") == []
    assert proxy.heads("OPTIONS") == []


def test_first_connect_resumes_with_last_event_id_query(page: Page, fast_hub: HubProcess) -> None:
    channel = fresh()
    ids = [publish(fast_hub.url, channel, i) for i in range(4)]
    page.open_stream("s", f"{fast_hub.url}/channels/{channel}/stream?last_event_id={ids[1]}")
    events = page.wait_events("s", 2)
    assert [(e["data"], e["lastEventId"]) for e in events] == [("2", ids[2]), ("3", ids[3])]


def test_reconnects_after_a_cut_and_gets_every_event_once_in_order(
    page: Page, fast_hub: HubProcess, proxy: CutProxy
) -> None:
    channel = fresh()
    page.open_stream("s", f"{proxy.url}/channels/{channel}/stream")
    page.wait("s", "open")
    wait_subscribed(fast_hub.url, channel)
    ids = [publish(fast_hub.url, channel, n) for n in range(3)]
    page.wait_events("s", 3)

    # 1. Cut, hold the browser out, publish while it is surely away, let it in.
    assert proxy.cut(hold=True) == 1
    page.wait("s", "error")
    back = proxy.wait_requests(2)[1]
    assert back.headers["last-event-id"] == ids[2]
    ids += [publish(fast_hub.url, channel, n) for n in range(3, 6)]
    proxy.release()
    page.wait("s", "open", 2)
    page.wait_events("s", 6)

    # 2. Cut and publish at once, racing the reconnect (retry: 250 ms).
    assert proxy.cut(hold=False) == 1
    ids += [publish(fast_hub.url, channel, n) for n in range(6, 9)]
    page.wait("s", "open", 3)
    assert proxy.heads("GET")[2].headers["last-event-id"] == ids[5]
    ids.append(publish(fast_hub.url, channel, 9))
    events = page.wait_events("s", 10)
    assert [e["data"] for e in events] == [str(n) for n in range(10)]
    assert [e["lastEventId"] for e in events] == ids
    assert len(page.events("s")) == 10
    errors = page.log("s", "error")
    assert [e["readyState"] for e in errors] == [0, 0]  # CONNECTING: it comes back by itself
    # A Last-Event-ID on a cross-origin EventSource needs no CORS preflight.
    assert proxy.heads("OPTIONS") == []


def test_multi_channel_cursor_resumes_from_the_browser(
    page: Page, fast_hub: HubProcess, proxy: CutProxy
) -> None:
    a, b = fresh("ma"), fresh("mb")
    page.open_stream("m", f"{proxy.url}/stream?channel={a}&channel={b}", "update")
    page.wait("m", "open")
    wait_subscribed(fast_hub.url, a)
    wait_subscribed(fast_hub.url, b)
    publish(fast_hub.url, a, 1)
    publish(fast_hub.url, b, 2, event="update")
    events = page.wait_events("m", 2)
    cursor = events[1]["lastEventId"]
    assert ":" not in cursor
    assert len(cursor.encode()) < 128

    assert proxy.cut(hold=True) == 1
    back = proxy.wait_requests(2)[1]
    assert back.headers["last-event-id"] == cursor
    publish(fast_hub.url, b, 3)
    publish(fast_hub.url, a, 4, event="update")
    proxy.release()
    page.wait_events("m", 4)
    publish(fast_hub.url, a, 5)
    events = page.wait_events("m", 5)
    got = [(e["kind"], json.loads(e["data"])) for e in events]
    # A resume replays channel by channel (in the stream's channel order), then goes live.
    assert got == [
        ("message", {"channel": a, "data": 1}),
        ("typed", {"channel": b, "data": 2}),
        ("typed", {"channel": a, "data": 4}),
        ("message", {"channel": b, "data": 3}),
        ("message", {"channel": a, "data": 5}),
    ]
    assert len({e["lastEventId"] for e in events}) == 5
    assert len(page.events("m")) == 5
    assert proxy.heads("OPTIONS") == []


def test_hub_restart_comes_back_and_the_cursor_survives_the_gap(page: Page) -> None:
    """The memory broker loses history on restart: the old id gets ``hub.gap``
    (no ``id:`` line), and the browser keeps resuming from its old cursor."""
    env = {"HUB_HEARTBEAT_SECONDS": "0.4", "HUB_RETRY_MS": str(RETRY_MS)}
    old = HubProcess(env)
    old.start()
    new = HubProcess(env, port=old.port)
    channel = fresh()
    try:
        with CutProxy(old.port) as proxy:
            page.open_stream("r", f"{proxy.url}/channels/{channel}/stream")
            page.wait("r", "open")
            wait_subscribed(old.url, channel)
            before = [publish(old.url, channel, n) for n in range(2)]
            page.wait_events("r", 2)
            proxy.hold()
            old.stop()  # SIGTERM: the stream ends with a jittered retry:, the browser comes back
            back = proxy.wait_requests(2)[1]
            assert back.headers["last-event-id"] == before[1]
            new.start()
            proxy.release()
            gap = page.wait_events("r", 3)[2]
            assert (gap["kind"], gap["type"]) == ("typed", "hub.gap")
            assert json.loads(gap["data"]) == {"channel": channel, "requested": before[1], "oldest": None}
            assert gap["lastEventId"] == before[1]
            assert proxy.cut(hold=True) == 1
            assert proxy.wait_requests(3)[2].headers["last-event-id"] == before[1]
            after = publish(new.url, channel, "after the restart")
            proxy.release()
            events = page.wait_events("r", 5)
            assert [(e["type"], json.loads(e["data"])) for e in events[3:]] == [
                ("hub.gap", {"channel": channel, "requested": before[1], "oldest": after}),
                ("message", "after the restart"),
            ]
            assert events[4]["lastEventId"] == after
            assert len(page.events("r")) == 5
            assert [e["readyState"] for e in page.log("r", "error")] == [0, 0]  # SIGTERM, then the cut
    finally:
        old.stop()
        new.stop()
