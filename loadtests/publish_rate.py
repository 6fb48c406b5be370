"""How many publishes a second one hub process takes: N keep-alive connections
POSTing small JSON events, each waiting for its 202 before the next, spread
over many channels that have no subscribers (so this measures the publish path
alone, not fan-out)::

    taskset -c 0 .venv/bin/ssehub serve --port 8101 --log-level warning &
    taskset -c 1 .venv/bin/python -m loadtests.publish_rate --port 8101

Run it against a running hub; pin hub and tool to different cores.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import uvloop

log = logging.getLogger("loadtests.publish_rate")


async def _connection(port: int, index: int, channels: int, deadline: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.monotonic() < deadline:
            body = b'{"data":{"n":%d}}' % done
            channel = (index * 7919 + done) % channels
            writer.write(
                b"POST /channels/rate-%d/events HTTP/1.1\r\nHost: hub\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (channel, len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"publish refused: {head.splitlines()[0]!r}")
            done += 1
    finally:
        writer.close()
    return done


async def measure(port: int, connections: int, channels: int, seconds: float) -> float:
    started = time.monotonic()
    counts = await asyncio.gather(
        *(_connection(port, i, channels, started + seconds) for i in range(connections))
    )
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for _ in range(args.runs):
        rate = uvloop.run(measure(args.port, args.connections, args.channels, args.seconds))
        log.info("%.0f publishes/s (%d connections, %d channels)", rate, args.connections, args.channels)


if __name__ == "__main__":
    main()
