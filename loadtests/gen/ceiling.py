"""Measure the generator's own ceiling: deliveries/s it can parse on one core.

A trivial SSE server (this module, ``--serve``) pinned to core 0 floods every
connected subscriber with pre-formatted events for a fixed time, as fast as the
sockets accept them; one generator worker pinned to core 1 counts and
timestamps them.  Whatever rate the generator reports is its ceiling, since the
server does no per-subscriber work beyond one ``write``.

    python -m loadtests.gen.ceiling --subscribers 1000 --batch 1 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from typing import cast

from loadtests.common import LOOPBACK, free_port, pin_current_process, raise_nofile_limit, wait_tcp
from loadtests.gen.pool import GeneratorPool
from loadtests.gen.target import Target

log = logging.getLogger(__name__)

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\n:ok\n\n"
HIGH_WATER = 64 * 1024  # skip a subscriber whose socket buffer is this full


class _FloodProto(asyncio.Protocol):
    def __init__(self, clients: list[asyncio.Transport]) -> None:
        self.clients = clients

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:  # answer the GET once, then keep the stream for flooding
            self.transport.write(HEAD)
            self.clients.append(self.transport)


async def _flood(port: int, subscribers: int, batch: int, duration: float) -> None:
    loop = asyncio.get_running_loop()
    clients: list[asyncio.Transport] = []
    server = await loop.create_server(lambda: _FloodProto(clients), LOOPBACK, port, backlog=4096)
    deadline = loop.time() + 60
    # Polling a list the protocols fill; bounded by the deadline.
    while len(clients) < subscribers and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    end = loop.time() + duration
    while loop.time() < end:
        block = b'data: {"t":%d,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}\n\n' % time.time_ns()
        block *= batch
        for tr in clients:
            if tr.get_write_buffer_size() < HIGH_WATER:
                tr.write(block)
        await asyncio.sleep(0)
    for tr in clients:
        tr.close()
    server.close()


def serve_main(port: int, subscribers: int, batch: int, duration: float) -> None:
    """Entry point of the trivial server process."""
    raise_nofile_limit()
    import uvloop

    uvloop.run(_flood(port, subscribers, batch, duration))


def measure(
    subscribers: int = 1000, batch: int = 1, duration: float = 5.0, server_core: int = 0
) -> dict[str, object]:
    """Run the trivial server and one generator worker; return the measured rate."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.gen.ceiling", "--serve", "--port", str(port),
           "--subscribers", str(subscribers), "--batch", str(batch), "--duration", str(duration)]  # fmt: skip
    proc = subprocess.Popen(["taskset", "-c", str(server_core), *cmd])
    try:
        wait_tcp(port)
        target = Target("trivial", LOOPBACK, port, "/s/{ch}", "/p/{ch}", False)
        with GeneratorPool(1) as pool:
            conn = pool.connect(target, ["c"] * subscribers)
            pool.reset()
            t0, cpu0 = time.perf_counter(), pool.cpu_seconds()
            proc.wait(timeout=duration + 70)
            elapsed = time.perf_counter() - t0
            cpu = pool.cpu_seconds() - cpu0
            snap = pool.snapshot()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    received = int(snap["received"])
    busy = cpu / max(elapsed, 1e-9)
    return {
        "generator_cpu_busy": round(busy, 2),
        # What one fully busy core would parse at this read pattern.
        "extrapolated_per_core_per_s": round(received / max(cpu, 1e-9)),
        "subscribers": subscribers,
        "events_per_write": batch,
        "opened": conn["opened"],
        "received": received,
        "elapsed_s": round(elapsed, 2),
        "deliveries_per_s": round(received / max(elapsed, 1e-9)),
        "mb_per_s": round(int(snap["bytes"]) / max(elapsed, 1e-9) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1, help="events per server write")
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.port, args.subscribers, args.batch, args.duration)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_nofile_limit()
    pin_current_process({1})
    print(json.dumps(measure(args.subscribers, args.batch, args.duration)))


if __name__ == "__main__":
    main()
