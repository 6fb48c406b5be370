"""Quick fan-out rate through Redis next to the memory broker's: one publisher, N subscribers, one node.

Why a separate script: the full bench compares servers; this one answers one
question for the Redis broker (what does the Redis hop cost a node's fan-out?)
in under a minute, with the same client for both brokers.

For each broker it starts a hub (pinned to core 0 with ``taskset`` when there
is one), opens N streams on one channel with bare asyncio sockets (cheap
enough that the client is not the bottleneck), then one publisher POSTs
events one after another over one connection, and it times from the first
POST until every stream has every event::

    .venv/bin/python -m loadtests.redis_fanout_quick --subscribers 1000 --events 500

Deliveries per second = subscribers x events / that time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

log = logging.getLogger("loadtests.redis_fanout_quick")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, cmd: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core), *cmd] if taskset and (os.cpu_count() or 1) > 1 else cmd


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 0.2):
        return True


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="fanout-redis-")
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
    proc = subprocess.Popen(pinned(1, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: accepts(port), 10, "redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def hub(redis_url: str | None) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "HUB_HEARTBEAT_SECONDS": "60", "HUB_LOG_LEVEL": "warning"}
    if redis_url:
        env["HUB_REDIS_URL"] = redis_url
    cmd = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(pinned(0, cmd), env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 20, "the hub")
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


class Counter:
    """Counts complete SSE blocks (``\\n\\n``) across all streams."""

    def __init__(self, want: int) -> None:
        self.count = 0
        self.want = want
        self.done = asyncio.Event()

    def add(self, n: int) -> None:
        self.count += n
        if self.count >= self.want:
            self.done.set()


async def subscribe(port: int, channel: str, counter: Counter, opened: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /channels/{channel}/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b": ok\n")
    blocks = head.split(b"\r\n\r\n", 1)[1].count(b"\n\n")  # retry + comment: not events
    counter.add(-blocks)
    opened.set()
    tail = b""
    try:
        while True:  # until cancelled
            chunk = await reader.read(65536)
            if not chunk:
                return
            both = tail + chunk
            counter.add(both.count(b"\n\n") - tail.count(b"\n\n"))
            tail = both[-1:]
    finally:
        writer.close()


async def measure(url: str, subscribers: int, events: int) -> tuple[float, float]:
    """Returns (deliveries per second, publishes per second)."""
    port = int(url.rsplit(":", 1)[1])
    counter = Counter(subscribers * events)
    tasks = []
    for start in range(0, subscribers, 200):  # in batches, not to overflow the accept queue
        batch = [asyncio.Event() for _ in range(start, min(subscribers, start + 200))]
        tasks += [asyncio.create_task(subscribe(port, "fanout", counter, ev)) for ev in batch]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in batch)), 30)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        # Wait until every stream is attached: a warm-up event reaches all of them.
        counter.want = subscribers
        counter.done.clear()
        await http.post("/channels/fanout/events", json={"data": "warm-up"})
        await asyncio.wait_for(counter.done.wait(), 30)
        counter.count, counter.want = 0, subscribers * events
        counter.done.clear()
        began = time.perf_counter()
        for n in range(events):
            response = await http.post("/channels/fanout/events", json={"data": {"n": n, "pad": "x" * 64}})
            response.raise_for_status()
        published = time.perf_counter() - began
        try:
            await asyncio.wait_for(counter.done.wait(), 120)
        except TimeoutError:
            raise RuntimeError(f"only {counter.count} of {counter.want} deliveries arrived") from None
        elapsed = time.perf_counter() - began
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return subscribers * events / elapsed, events / published


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--broker", choices=["memory", "redis", "both"], default="both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows = []
    for broker in ["memory", "redis"] if args.broker == "both" else [args.broker]:
        with redis_server() as redis_url, hub(redis_url if broker == "redis" else None) as url:
            rate, publishes = asyncio.run(measure(url, args.subscribers, args.events))
        rows.append((broker, rate, publishes))
        log.info("%s: %.0f deliveries/s (%.0f publishes/s)", broker, rate, publishes)
    print(f"\n{'broker':<8} {'subscribers':>11} {'events':>7} {'deliveries/s':>13} {'publishes/s':>12}")
    for broker, rate, publishes in rows:
        print(f"{broker:<8} {args.subscribers:>11} {args.events:>7} {rate:>13,.0f} {publishes:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
