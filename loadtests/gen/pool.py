"""Coordinator side of the generator: starts worker processes and drives them.

Workers are started with the 'spawn' method so they inherit no server pipes or
event loop state.  Connections are dealt round-robin over the workers, so a
run of N streams needs ceil(N / per-worker limit) workers to stay under the
per-process open-file limit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any

from loadtests.common import cpu_seconds
from loadtests.gen.stats import merge_snapshots
from loadtests.gen.target import Target
from loadtests.gen.worker import worker_main

log = logging.getLogger(__name__)

# Leave headroom under the 20,000 fd hard limit for the loop's own fds.
MAX_STREAMS_PER_WORKER = 9_500


def workers_for(streams: int, minimum: int = 1) -> int:
    """Worker processes needed to hold `streams` connections."""
    return max(minimum, math.ceil(streams / MAX_STREAMS_PER_WORKER))


class GeneratorPool:
    """A set of worker processes holding SSE subscribers."""

    def __init__(self, workers: int, log_level: int = logging.WARNING) -> None:
        ctx = mp.get_context("spawn")
        self.counters: Any = ctx.RawArray("q", workers)
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(i, child, self.counters, log_level), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.procs)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by all worker processes (to spot a saturated generator)."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)

    def received_total(self) -> int:
        """Deliveries counted so far (mirrored by workers every few ms)."""
        return int(sum(self.counters))

    def _call(self, name: str, args: list[Any], timeout: float) -> list[dict[str, Any]]:
        try:
            for pipe, arg in zip(self.pipes, args, strict=True):
                pipe.send((name, arg))
            deadline = time.monotonic() + timeout
            replies = []
            for i, pipe in enumerate(self.pipes):
                if not pipe.poll(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"generator worker {i} did not answer {name!r} in {timeout}s")
                replies.append(pipe.recv())
        except (OSError, EOFError) as exc:
            codes = [p.exitcode for p in self.procs]
            raise RuntimeError(f"generator worker lost during {name!r}: {exc}; exit codes {codes}") from exc
        return replies

    def connect(
        self, target: Target, channels: list[str], concurrency: int = 512, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Open len(channels) streams spread over the workers; return totals."""
        shares = [channels[i :: self.size] for i in range(self.size)]
        per_worker = max(16, concurrency // self.size)
        args = [
            {"target": target, "channels": share, "concurrency": per_worker, "deadline_s": timeout}
            for share in shares
        ]
        t0 = time.perf_counter()
        replies = self._call("connect", args, timeout + 30)
        wall = time.perf_counter() - t0
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        last = [r["last_first_byte_s"] for r in replies if r["last_first_byte_s"] is not None]
        return {
            "requested": len(channels),
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": errors,
            "wall_s": wall,
            "time_to_all_first_bytes_s": max(last) if last else None,
        }

    def reset(self) -> None:
        """Zero delivery counters and latency histograms in every worker."""
        self._call("reset", [None] * self.size, 30)
        for i in range(self.size):
            self.counters[i] = 0

    def snapshot(self) -> dict[str, Any]:
        """Merged counters + histogram + streams still held."""
        replies = self._call("snapshot", [None] * self.size, 60)
        held = sum(int(r.pop("held")) for r in replies)
        merged = merge_snapshots(replies)
        merged["held"] = held
        return merged

    def close_streams(self) -> None:
        """Close every held stream (the workers stay up)."""
        self._call("close", [{}] * self.size, 60)
        for i in range(self.size):
            self.counters[i] = 0

    def close_streams_safely(self) -> None:
        """close_streams for error paths: never raises."""
        try:
            self.close_streams()
        except (OSError, EOFError, TimeoutError):
            log.exception("could not close generator streams")

    def shutdown(self) -> None:
        """Stop the worker processes we started."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", None))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
