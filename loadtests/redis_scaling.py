"""Publish + fan-out through one Redis vs a Redis Cluster: where does the load go?

    python -m loadtests.redis_scaling                      # 1,000 channels, 8 publishers, 10 s each
    python -m loadtests.redis_scaling --channels 1000 --publishers 8 --seconds 10 --shards 3

For each setup (one redis-server; a cluster of ``--shards`` masters built with
redis-cli, no replicas) it starts one hub node on it, opens one stream per
channel, and has ``--publishers`` keep-alive connections POST events to random
channels as fast as they are answered, for ``--seconds``. It reports publishes/s
(answered 202), deliveries/s, the p50/p99 latency from the POST to the event on
its stream, and the CPU each Redis process used (per shard on the cluster), from
/proc. Everything runs on this machine: on 2 cores the hub, Redis and this
generator share them, so the figure to read is how the Redis work is split, not
the total throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.common import REPO_ROOT, cpu_seconds, free_port, free_ports

_DATA = re.compile(rb'data: \{"t":(\d+)\}')


def redis_cli(port: int, *args: str) -> str:
    cli = shutil.which("redis-cli") or "redis-cli"
    return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


class Redis:
    """redis-server processes: one, or a cluster of ``shards`` masters."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.dir = Path(tempfile.mkdtemp(prefix="hub-bench-redis-"))
        ports = free_ports(shards * 2)
        self.ports = ports[:shards]
        self.bus = ports[shards:]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        if self.shards == 1:
            return f"redis://127.0.0.1:{self.ports[0]}/0"
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        for i, port in enumerate(self.ports):
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(self.dir), "--loglevel", "warning"]  # fmt: skip
            if self.shards > 1:
                args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / f"n{i}.conf"),
                         "--cluster-port", str(self.bus[i])]  # fmt: skip
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            _wait(lambda port=port: _pong(port), 10)
        if self.shards > 1:
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            cli = shutil.which("redis-cli") or "redis-cli"
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-yes"], check=True, capture_output=True
            )
            _wait(lambda: all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in self.ports), 30)

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


def _pong(port: int) -> bool:
    try:
        return redis_cli(port, "PING").strip() == "PONG"
    except subprocess.SubprocessError:
        return False


def _wait(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError("timed out")


@dataclass
class Result:
    setup: str
    publishes: int
    deliveries: int
    seconds: float
    latencies: list[float]
    redis_cpu: list[float]
    hub_cpu: float

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        shares = " / ".join(f"{c / self.seconds:.0%}" for c in self.redis_cpu)
        return (
            f"| {self.setup} | {self.publishes / self.seconds:,.0f} | {self.deliveries / self.seconds:,.0f} "
            f"| {p50:.1f} | {p99:.1f} | {shares} | {sum(self.redis_cpu) / self.seconds:.0%} "
            f"| {self.hub_cpu / self.seconds:.0%} |"
        )


async def subscriber(
    port: int, channel: str, latencies: list[float], counts: list[int], ready: asyncio.Event
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET /channels/{channel}/stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    writer.write(head.encode())
    buffer = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            if b": ok" in buffer:
                ready.set()
            now = time.time_ns()
            end = 0
            for match in _DATA.finditer(buffer):
                latencies.append((now - int(match.group(1))) / 1e9)
                counts[0] += 1
                end = match.end()
            buffer = buffer[end:] if end else buffer[-256:]
    finally:
        writer.close()


async def publisher(port: int, channels: list[str], until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            body = json.dumps({"data": {"t": time.time_ns()}}).encode()
            channel = random.choice(channels)
            writer.write(
                f"POST /channels/{channel}/events HTTP/1.1\r\nHost: bench\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 202"):
                counts[0] += 1
    finally:
        writer.close()


def start_hub(url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "HUB_REDIS_URL": url, "HUB_LOG_LEVEL": "warning", "HUB_PUBLISH_OPEN": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import urllib.request

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    _wait(ready, 30)
    return proc, port


async def run(setup: str, shards: int, channels: int, publishers: int, seconds: float) -> Result:
    redis = Redis(shards)
    redis.start()
    hub, port = start_hub(redis.url)
    names = [f"bench{n}" for n in range(channels)]
    latencies: list[float] = []
    delivered, published = [0], [0]
    try:
        readies = [asyncio.Event() for _ in names]
        subs = [
            asyncio.create_task(subscriber(port, n, latencies, delivered, r))
            for n, r in zip(names, readies, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        cpu0, hub0 = redis.cpu(), cpu_seconds(hub.pid)
        start = time.monotonic()
        await asyncio.gather(*(publisher(port, names, start + seconds, published) for _ in range(publishers)))
        elapsed = time.monotonic() - start
        cpu1, hub1 = redis.cpu(), cpu_seconds(hub.pid)
        for task in subs:
            task.cancel()
        await asyncio.gather(*subs, return_exceptions=True)
    finally:
        hub.terminate()
        hub.wait(20)
        redis.stop()
    return Result(
        setup,
        published[0],
        delivered[0],
        elapsed,
        latencies,
        [b - a for a, b in zip(cpu0, cpu1, strict=True)],
        hub1 - hub0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    results = [
        asyncio.run(run("one Redis", 1, args.channels, args.publishers, args.seconds)),
        asyncio.run(
            run(f"cluster, {args.shards} shards", args.shards, args.channels, args.publishers, args.seconds)
        ),
    ]
    print(
        f"{args.channels} channels, 1 stream each, {args.publishers} publishing connections,"
        f" {args.seconds:g} s"
    )
    print(
        "| setup | publishes/s | deliveries/s | p50 ms | p99 ms | Redis CPU per shard"
        " | Redis CPU total | hub CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
