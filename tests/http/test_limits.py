"""Connection limits and slow consumers, against a real hub process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.sse import SSEParser
from tests.support.client import client, open_stream, publish
from tests.support.procs import HubProcess, running_hub, wait_until

pytestmark = [pytest.mark.integration]


def metric(hub: HubProcess, name: str) -> float:
    for line in httpx.get(hub.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.fixture(scope="module")
def small_hub() -> Iterator[HubProcess]:
    with running_hub(
        {"HUB_MAX_CONNECTIONS": "3", "HUB_MAX_PENDING_BYTES": "65536", "HUB_RETRY_MS": "2000"}
    ) as hub:
        yield hub


@pytest.mark.anyio
async def test_full_node_refuses_new_streams_and_keeps_the_old(small_hub: HubProcess) -> None:
    url = f"{small_hub.url}/channels/full/stream"
    async with (
        client() as http,
        open_stream(http, url) as a,
        open_stream(http, url) as b,
        open_stream(http, url) as c,
    ):
        # A plain client gets a 503 it can read ...
        refused = await http.get(url, headers={"Accept": "*/*"})
        assert refused.status_code == 503
        assert refused.json()["error"] == "unavailable"
        assert int(refused.headers["retry-after"]) > 0
        # ... an EventSource gets a 200 that tells it to come back later, then closes.
        es = await http.get(url, headers={"Accept": "text/event-stream"})
        assert es.status_code == 200
        assert es.headers["content-type"].startswith("text/event-stream")
        parser = SSEParser()
        parser.feed(es.content)
        assert parser.retry is not None
        assert 1000 <= parser.retry <= 3000
        assert es.headers["connection"] == "close"
        # ... and the node closes that socket at once (it keeps no idle keep-alives).
        with socket.create_connection(("127.0.0.1", small_hub.port)) as sock:
            sock.sendall(
                b"GET /channels/full/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            )
            sock.settimeout(5)  # a kept-alive socket would time out here instead of ending
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"\r\n\r\nretry: " in answer
        # The streams already open are unaffected.
        await publish(http, small_hub.url, "full", "still here")
        for s in (a, b, c):
            assert [e.data for e in await s.wait_for(1)] == ['"still here"']
    assert metric(small_hub, "ssehub_refused") >= 2


def _raw_stream(port: int, path: str, last_event_id: str = "", stalls: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if stalls:
        # A small receive buffer, so the kernel holds little for a client that stopped reading.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    return sock


def _read_events(sock: socket.socket, parser: SSEParser, deadline: float, until: int = 0) -> list[str]:
    """Read until the server closes or resets (or ``until`` events); return the event ids.

    The body is chunked; the chunk-size lines parse as unknown SSE fields and are ignored.
    """
    ids: list[str] = []
    sock.settimeout(0.5)
    while time.monotonic() < deadline and not (until and len(ids) >= until):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        ids.extend(e.id for e in parser.feed(data) if e.id)
    return ids


@pytest.mark.anyio
async def test_slow_client_is_cut_others_stay_fast_and_it_resumes_without_loss(small_hub: HubProcess) -> None:
    channel = "slow"
    path = f"/channels/{channel}/stream"
    slow = _raw_stream(small_hub.port, path, stalls=True)
    cut_before = metric(small_hub, "ssehub_slow_cut")
    big = "x" * 30_000
    async with client() as http, open_stream(http, small_hub.url + path) as fast:
        ids = []
        latencies = []
        for i in range(40):  # up to 24 MB, far past what the kernel buffers for the stalled client
            start = time.monotonic()
            batch = [{"data": {"i": i * 20 + j, "pad": big}} for j in range(20)]
            response = await http.post(f"{small_hub.url}/channels/{channel}/events", json=batch)
            ids.extend(response.json()["ids"])
            await fast.wait_for(len(ids))
            latencies.append(time.monotonic() - start)
            if metric(small_hub, "ssehub_slow_cut") > cut_before:
                break
        assert metric(small_hub, "ssehub_slow_cut") == cut_before + 1, "the slow client was never cut"
        # The client that kept reading saw every event, promptly.
        assert [e.id for e in fast.events] == ids
        assert sorted(latencies)[len(latencies) // 2] < 0.5
    # The slow client now reads what reached it, then resumes from its last id.
    parser = SSEParser()
    got = _read_events(slow, parser, time.monotonic() + 10)
    slow.close()
    assert len(got) < len(ids)
    resume_from = got[-1] if got else ""
    again = _raw_stream(small_hub.port, path, resume_from or "earliest")
    try:
        wait_until(lambda: bool(again.recv(1, socket.MSG_PEEK)), 5, "replay")
        rest = _read_events(again, SSEParser(), time.monotonic() + 2, until=len(ids) - len(got))
    finally:
        again.close()
    assert got + rest[: len(ids) - len(got)] == ids


@pytest.mark.anyio
async def test_rss_stays_bounded_while_a_client_stalls(small_hub: HubProcess) -> None:
    assert small_hub.proc is not None
    status = f"/proc/{small_hub.proc.pid}/status"

    def rss_kb() -> int:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    stalled = _raw_stream(small_hub.port, "/channels/stall/stream", stalls=True)
    try:
        async with client() as http:
            wait_until(lambda: metric(small_hub, "ssehub_streams") >= 1, 5, "stream")
            before = rss_kb()
            payload = "y" * 60_000
            for _ in range(300):  # 18 MB published at a client that reads nothing
                await publish(http, small_hub.url, "stall", payload)
            after = rss_kb()
        # The history (50 events of 60 KB here at most) and the cut client's buffer bound growth.
        assert after - before < 40_000, f"RSS grew by {after - before} KB"
    finally:
        stalled.close()
