"""Misbehaving clients against a real ``ssehub serve``: nobody else may notice.

- Clients that reset their streams in a storm on one channel, while events
  flow on it and on another: the other channel's subscriber gets every event.
- Clients that resume a large history and never read: memory stays bounded,
  they are cut, and a normal subscriber is unaffected.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.client import client, open_stream, publish
from tests.support.procs import HubProcess, RedisServer, running_hub, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_RESET = struct.pack("ii", 1, 0)


def churn(port: int, path: str, stop: threading.Event, opened: list[int]) -> None:
    """Open a stream, let it receive a little, reset it; again, until told to stop."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(request)
            sock.recv(4096)  # the head and ": ok": it is a live subscriber now
            time.sleep(0.005 * (len(opened) % 5))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            sock.close()  # RST: the transport closes under the hub's next write
            opened.append(1)
        except OSError:
            continue


@pytest.fixture(scope="module")
def churn_hub() -> Iterator[HubProcess]:
    with running_hub({"HUB_HEARTBEAT_SECONDS": "0.5"}) as hub:
        yield hub


async def test_a_disconnect_storm_on_one_channel_costs_another_channel_nothing(churn_hub: HubProcess) -> None:
    stop = threading.Event()
    opened: list[int] = []
    churners = [
        threading.Thread(
            target=churn, args=(churn_hub.port, "/channels/busy/stream", stop, opened), daemon=True
        )
        for _ in range(30)
    ]
    sent: list[str] = []
    async with client() as http, open_stream(http, f"{churn_hub.url}/channels/steady/stream") as steady:
        for t in churners:
            t.start()
        try:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                _, steady_id = await asyncio.gather(
                    publish(http, churn_hub.url, "busy", {"pad": "x" * 2000}),
                    publish(http, churn_hub.url, "steady", {"n": len(sent)}),
                )
                sent.append(steady_id)
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            for t in churners:
                t.join(5)
        got = await steady.wait_for(len(sent), timeout=10)
        assert [e.id for e in got] == sent
    assert len(opened) > 200, "the storm was too small to mean anything"
    assert "Traceback" not in churn_hub.log()
    # Every reset stream is gone from the hub (none left behind as a ghost).
    wait_until(lambda: churn_hub.metric("ssehub_streams") == 0, 10, "streams to be released")


def stalled_resume(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    # Small buffers: the kernel holds little, the rest would queue in the hub.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: earliest\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_never_reading_resumers_are_bounded_and_cut_and_others_go_on(
    broker: str, request: pytest.FixtureRequest
) -> None:
    env = {
        "HUB_HISTORY_SIZE": "400",
        "HUB_MAX_PENDING_BYTES": "262144",
        "HUB_STALL_SECONDS": "2",
        "HUB_HEARTBEAT_SECONDS": "0.5",
    }
    if broker == "redis":
        # The replay reads the Redis stream: a page at a time, never the whole history.
        server: RedisServer = request.getfixturevalue("redis_server")
        env["HUB_REDIS_URL"] = server.url
    with running_hub(env) as hub:
        async with client() as http:
            pad = "x" * 60_000
            for _ in range(25):  # 400 x 60 KB = 24 MB of history
                batch = [{"data": {"pad": pad}}] * 16
                assert (await http.post(f"{hub.url}/channels/big/events", json=batch)).status_code == 202
            base = hub.memory_kb()
            stalled = [stalled_resume(hub.port, "/channels/big/stream") for _ in range(30)]
            try:
                async with open_stream(http, f"{hub.url}/channels/other/stream") as other:
                    wait_until(lambda: hub.metric("ssehub_streams") >= 31, 10, "streams to open")
                    peak = base
                    for i in range(10):
                        sent = await publish(http, hub.url, "other", {"i": i})
                        await other.wait_for(i + 1)
                        assert other.events[-1].id == sent
                        peak = max(peak, hub.memory_kb())
                    # Without pacing each would queue its 24 MB replay: 720 MB in all.
                    assert peak - base < 80_000, f"RSS grew {peak - base} KB"
                    wait_until(lambda: hub.metric("ssehub_slow_cut") >= 30, 15, "stalled replays to be cut")
                    sent = await publish(http, hub.url, "other", "after")
                    assert (await other.wait_for(11))[-1].id == sent
            finally:
                for sock in stalled:
                    sock.close()
            # A client that reads gets the whole history.
            async with open_stream(
                http, f"{hub.url}/channels/big/stream", {"Last-Event-ID": "earliest"}
            ) as full:
                assert len(await full.wait_for(400, timeout=20)) == 400
        assert "Traceback" not in hub.log()
