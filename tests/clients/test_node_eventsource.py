"""The hub under Node's ``eventsource`` npm package (the WHATWG EventSource for Node).

``tests/clients/node/listen.mjs`` opens an EventSource and prints what it
reports as JSON lines; these tests read them. The package is installed from
``tests/clients/node/package-lock.json`` (``npm ci``) when it is missing.
The client reconnects by itself, with ``Last-Event-ID``, when the connection
drops: a :class:`CutProxy` between it and the hub drops it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

NODE_DIR = Path(__file__).resolve().parent / "node"
HEARTBEAT_ON_WIRE = b"\r\n:\n\r\n"


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the pinned ``eventsource`` installed beside listen.mjs."""
    binary = require_binary("node")
    if not (NODE_DIR / "node_modules" / "eventsource" / "package.json").exists():
        npm = require_binary("npm")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return binary


class NodeClient:
    """``node listen.mjs URL TYPES...``, its JSON lines collected by a thread."""

    def __init__(self, node: str, url: str, *types: str) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [node, "listen.mjs", url, *types],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, name="node-client", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.records.append(json.loads(line))

    def kinds(self, *kinds: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["kind"] in kinds]

    def events(self) -> list[dict[str, Any]]:
        return self.kinds("message", "typed")

    def wait(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        def enough() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}: {self.stderr()}")
            return len(self.kinds(kind)) >= count

        wait_until(enough, timeout, f"{count} {kind!r} from node (have {self.records})")
        return self.kinds(kind)

    def wait_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events()) >= count, timeout, f"{count} events (have {self.records})")
        return self.events()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        finally:
            self._thread.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            errors = self.stderr()
            self._stderr.close()
        assert code == 0, errors


@pytest.fixture
def proxy(fast_hub: HubProcess) -> Iterator[CutProxy]:
    with CutProxy(fast_hub.port) as p:
        yield p


def test_typed_untyped_text_and_json_events(node: str, fast_hub: HubProcess, proxy: CutProxy) -> None:
    channel = fresh()
    client = NodeClient(node, f"{proxy.url}/channels/{channel}/stream", "update")
    try:
        client.wait("open")
        wait_subscribed(fast_hub.url, channel)
        proxy.wait_downstream(1, HEARTBEAT_ON_WIRE, times=2)
        ids = publish_mix(fast_hub.url, channel)
        client.wait_events(4)
        beats = proxy.downstream(1).count(HEARTBEAT_ON_WIRE)
        proxy.wait_downstream(1, HEARTBEAT_ON_WIRE, times=beats + 2)
        ids.append(publish(fast_hub.url, channel, "last"))
        events = client.wait_events(5)
        # Typed events reach their listener only, untyped ones onmessage only;
        # an event type without a listener is dropped; no heartbeat surfaces.
        assert [(e["kind"], e["type"], e["data"], e["lastEventId"]) for e in events] == [
            ("message", "message", '{"n":1,"s":"é ✓"}', ids[0]),
            ("typed", "update", "[1,2]", ids[1]),
            ("message", "message", MIX_TEXT, ids[2]),
            ("typed", "update", "typed text", ids[4]),
            ("message", "message", '"last"', ids[5]),
        ]
        assert len(client.events()) == 5
        assert client.kinds("error") == []
    finally:
        client.close()


def test_first_connect_resumes_with_last_event_id_query(node: str, fast_hub: HubProcess) -> None:
    channel = fresh()
    ids = [publish(fast_hub.url, channel, i) for i in range(4)]
    url = f"{fast_hub.url}/channels/{channel}/stream?last_event_id={ids[1]}"
    client = NodeClient(node, url)
    try:
        events = client.wait_events(2)
        assert [(e["data"], e["lastEventId"]) for e in events] == [("2", ids[2]), ("3", ids[3])]
    finally:
        client.close()


def test_reconnects_after_a_cut_and_gets_every_event_once_in_order(
    node: str, fast_hub: HubProcess, proxy: CutProxy
) -> None:
    channel = fresh()
    client = NodeClient(node, f"{proxy.url}/channels/{channel}/stream")
    try:
        client.wait("open")
        wait_subscribed(fast_hub.url, channel)
        ids = [publish(fast_hub.url, channel, n) for n in range(3)]
        client.wait_events(3)

        # 1. Cut, hold the client out, publish while it is surely away, let it in.
        assert proxy.cut(hold=True) == 1
        client.wait("error")
        back = proxy.wait_requests(2)[1]
        assert back.headers["last-event-id"] == ids[2]
        assert back.headers["accept"] == "text/event-stream"
        ids += [publish(fast_hub.url, channel, n) for n in range(3, 6)]
        proxy.release()
        client.wait("open", 2)
        client.wait_events(6)

        # 2. Cut and publish at once, racing the reconnect (it waits retry: 250 ms).
        assert proxy.cut(hold=False) == 1
        ids += [publish(fast_hub.url, channel, n) for n in range(6, 9)]
        client.wait("open", 3, timeout=10)
        assert proxy.heads("GET")[2].headers["last-event-id"] == ids[5]
        ids.append(publish(fast_hub.url, channel, 9))
        events = client.wait_events(10)
        assert [e["data"] for e in events] == [str(n) for n in range(10)]
        assert [e["lastEventId"] for e in events] == ids
        assert len(client.events()) == 10
        assert len(client.kinds("error")) == 2  # one per cut: "reconnecting", never a failure
        assert all(e["readyState"] == 0 for e in client.kinds("error"))
    finally:
        client.close()


def test_hub_restart_comes_back_and_reports_the_gap(node: str) -> None:
    """The memory broker loses history on restart: the client's old id gets ``hub.gap``."""
    env = {"HUB_HEARTBEAT_SECONDS": "0.4", "HUB_RETRY_MS": str(RETRY_MS)}
    old = HubProcess(env)
    old.start()
    new = HubProcess(env, port=old.port)
    channel = fresh()
    with CutProxy(old.port) as proxy:
        client = NodeClient(node, f"{proxy.url}/channels/{channel}/stream", "hub.gap")
        try:
            client.wait("open")
            wait_subscribed(old.url, channel)
            before = [publish(old.url, channel, n) for n in range(2)]
            client.wait_events(2)
            proxy.hold()
            old.stop()
            assert "draining: ended 1 streams" in old.log()
            # SIGTERM ended the stream with a jittered retry: and the client came back.
            wait_until(
                lambda: proxy.downstream(1).endswith(b": come back later\n\r\n0\r\n\r\n"),
                5,
                "the end of the stream",
            )
            back = proxy.wait_requests(2, timeout=10)[1]
            assert back.headers["last-event-id"] == before[1]
            new.start()
            proxy.release()
            # The new process has no history: the old id gets a gap, with nothing after it.
            gap = client.wait_events(3)[2]
            assert (gap["kind"], gap["type"]) == ("typed", "hub.gap")
            assert json.loads(gap["data"]) == {"channel": channel, "requested": before[1], "oldest": None}
            # Quirk: this package reports each event's own id as lastEventId
            # ("" for the id-less gap) but keeps its cursor for the next reconnect.
            assert gap["lastEventId"] == ""
            assert proxy.cut(hold=True) == 1
            assert proxy.wait_requests(3)[2].headers["last-event-id"] == before[1]
            after = publish(new.url, channel, "after the restart")
            proxy.release()
            events = client.wait_events(5)
            assert [(e["type"], json.loads(e["data"])) for e in events[3:]] == [
                ("hub.gap", {"channel": channel, "requested": before[1], "oldest": after}),
                ("message", "after the restart"),
            ]
            assert events[4]["lastEventId"] == after
            assert len(client.events()) == 5
        finally:
            client.close()
            old.stop()
            new.stop()
