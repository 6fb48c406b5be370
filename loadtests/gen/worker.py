"""One generator process: holds many SSE subscribers and obeys the coordinator.

Commands arrive over a multiprocessing Pipe as ``(name, arg)`` tuples and each
gets exactly one reply.  The running delivery count is also mirrored into a
shared RawArray every few milliseconds so the coordinator's closed-loop
publisher can read it without a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from loadtests.common import raise_nofile_limit
from loadtests.gen.sse import SseSubscriber
from loadtests.gen.stats import Stats
from loadtests.gen.target import Target

log = logging.getLogger(__name__)

COUNTER_PERIOD_S = 0.005


def worker_main(index: int, conn: Connection, counters: Any, log_level: int) -> None:
    """Process entry point (must be importable for the spawn start method)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s gen-worker{index} %(levelname)s %(message)s")
    raise_nofile_limit()
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # still works, just slower
        runner = asyncio.run
    runner(Worker(index, conn, counters).serve())


class Worker:
    """State of one generator process."""

    def __init__(self, index: int, conn: Connection, counters: Any) -> None:
        self.index = index
        self.conn = conn
        self.counters = counters
        self.stats = Stats()
        self.subs: list[SseSubscriber] = []

    async def serve(self) -> None:
        """Answer commands until 'exit' (or the coordinator disappears)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        loop.add_reader(self.conn.fileno(), self._read_command, queue)
        # uvloop's add_reader makes the fd non-blocking; a large command then arrives in
        # pieces and Connection.recv() would raise BlockingIOError mid-message.  Reading
        # a whole message only once the fd is readable is what we want: block for the rest.
        os.set_blocking(self.conn.fileno(), True)
        mirror = asyncio.create_task(self._mirror_counter())
        try:
            while True:
                name, arg = await queue.get()
                if name == "exit":
                    break
                self.conn.send(await self._dispatch(name, arg))
        finally:
            mirror.cancel()
            self._close_all()

    def _read_command(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            queue.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            log.warning("coordinator pipe closed: exiting")
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            queue.put_nowait(("exit", None))

    async def _mirror_counter(self) -> None:
        while True:
            self.counters[self.index] = self.stats.received
            await asyncio.sleep(COUNTER_PERIOD_S)

    async def _dispatch(self, name: str, arg: Any) -> dict[str, Any]:
        if name == "connect":
            return await self.connect(arg["target"], arg["channels"], arg["concurrency"], arg["deadline_s"])
        if name == "reset":
            self.stats.reset_deliveries()
            return {"ok": True}
        if name == "snapshot":
            snap = self.stats.snapshot()
            snap["held"] = self.held()
            return snap
        if name == "close":
            return await self.close()
        return {"error": f"unknown command {name}"}

    def held(self) -> int:
        """Streams that were opened and are still open."""
        return sum(1 for s in self.subs if s.alive)

    async def connect(
        self, target: Target, channels: list[str], concurrency: int, deadline_s: float
    ) -> dict[str, Any]:
        """Open one stream per channel entry; wait for each stream's first bytes."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        requests = {ch: target.subscribe_request(ch) for ch in set(channels)}
        opened_before, failed_before = self.stats.opened, self.stats.failed
        deadline = loop.time() + deadline_s
        t0 = time.perf_counter()
        first_bytes: list[float] = []

        async def one(ch: str) -> None:
            async with sem:
                fut: asyncio.Future[bool] = loop.create_future()
                proto = SseSubscriber(requests[ch], self.stats, fut)
                try:
                    remaining = max(0.01, deadline - loop.time())
                    await asyncio.wait_for(
                        loop.create_connection(lambda: proto, target.host, target.port), remaining
                    )
                    self.subs.append(proto)
                    if await asyncio.wait_for(fut, max(0.01, deadline - loop.time())):
                        first_bytes.append(time.perf_counter() - t0)
                except (OSError, TimeoutError) as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                    if proto.first is not None:  # never reached the protocol's own accounting
                        proto.first = None
                        self.stats.failed += 1
                    proto.close()

        await asyncio.gather(*(one(ch) for ch in channels))
        elapsed = time.perf_counter() - t0
        first_bytes.sort()
        return {
            "requested": len(channels),
            "opened": self.stats.opened - opened_before,
            "failed": self.stats.failed - failed_before,
            "errors": errors,
            "elapsed_s": elapsed,
            "last_first_byte_s": first_bytes[-1] if first_bytes else None,
            "median_first_byte_s": first_bytes[len(first_bytes) // 2] if first_bytes else None,
        }

    async def close(self) -> dict[str, Any]:
        """Close every stream from our side and wait for the sockets to go."""
        n = len(self.subs)
        self._close_all()
        await asyncio.sleep(0.05)
        held = self.held()
        self.subs = []
        self.stats = Stats()  # fresh counters for the next wave/system
        return {"closed": n, "held_before_close": held}

    def _close_all(self) -> None:
        for sub in self.subs:
            sub.close()
