"""Headless connection-limit run against an already running hub (``make loadtest-connections``).

Ramps SSE subscribers on one channel in steps until streams fail or a maximum
is reached; after each step it publishes a few events and reports the
publish-to-receive latency at that load.  Every loop is bounded (max streams,
events per step, connect deadline).

    python -m loadtests.connections --url http://127.0.0.1:8000 --max 19000 --step 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from loadtests.common import LOOPBACK, raise_nofile_limit
from loadtests.gen.pool import GeneratorPool, workers_for
from loadtests.gen.publisher import PublishResult, publish_rate, run_async
from loadtests.gen.stats import latency_summary
from loadtests.gen.target import Target

log = logging.getLogger("loadtests.connections")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="hub base URL (loopback only)")
    p.add_argument("--max", type=int, default=19_000, help="stop after this many streams")
    p.add_argument("--step", type=int, default=2_000, help="streams added per step")
    p.add_argument("--events", type=int, default=20, help="events published per step to measure latency")
    p.add_argument("--rate", type=float, default=10.0, help="events/s while measuring latency")
    p.add_argument("--max-failures", type=int, default=0, help="stop once more streams than this failed")
    p.add_argument("--sub-path", default="/channels/{ch}/stream")
    p.add_argument("--pub-path", default="/channels/{ch}/events")
    p.add_argument("--raw-payload", action="store_true", help="publish the payload unwrapped (nchan, naive)")
    p.add_argument("--json", help="also write the rows to this file")
    return p.parse_args(argv)


def target_from(args: argparse.Namespace) -> Target:
    url = urlsplit(args.url)
    host = url.hostname or LOOPBACK
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise SystemExit("only loopback targets are allowed")
    return Target("target", host, url.port or 80, args.sub_path, args.pub_path, not args.raw_payload)


def measure_step(
    pool: GeneratorPool, target: Target, channel: str, events: int, rate: float
) -> dict[str, Any]:
    """Publish `events` at `rate` and summarise deliveries and latency."""
    pool.reset()
    pub = run_async(lambda: publish_rate(target, [channel], rate, events / rate, conns=1))
    assert isinstance(pub, PublishResult)
    time.sleep(1.0)  # stragglers
    snap = pool.snapshot()
    expected = pub.accepted * int(snap["held"])
    out: dict[str, Any] = {
        "published": pub.accepted,
        "publish_errors": pub.errors,
        "delivered_fraction": round(int(snap["received"]) / expected, 4) if expected else None,
    }
    out.update(latency_summary(snap))
    return out


def ramp(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Add streams step by step until a failure or the maximum."""
    target = target_from(args)
    channel = f"conn{uuid.uuid4().hex[:8]}"
    rows: list[dict[str, Any]] = []
    failed_total = 0
    with GeneratorPool(workers_for(args.max)) as pool:
        total = 0
        while total < args.max:
            n = min(args.step, args.max - total)
            res = pool.connect(target, [channel] * n, timeout=60)
            total += n
            failed_total += int(res["failed"])
            row: dict[str, Any] = {
                "requested": total, "step_open_s": round(res["wall_s"], 3),
                "failed_total": failed_total, "errors": res["errors"],
            }  # fmt: skip
            row.update(measure_step(pool, target, channel, args.events, args.rate))
            row["held"] = pool.snapshot()["held"]
            rows.append(row)
            log.info("%s", row)
            if failed_total > args.max_failures:
                break
        pool.close_streams()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_nofile_limit()
    rows = ramp(args)
    heads = [("streams", 8), ("held", 8), ("failed", 7), ("open s", 7), ("p50 ms", 7), ("p99 ms", 7)]
    print(" ".join(f"{h:>{w}}" for h, w in [*heads, ("max ms", 7), ("deliv", 6)]))
    for r in rows:
        print(
            f"{r['requested']:>8} {r['held']:>8} {r['failed_total']:>7} {r['step_open_s']:>7} "
            f"{r['p50_ms']!s:>7} {r['p99_ms']!s:>7} {r['max_ms']!s:>7} {r['delivered_fraction']!s:>6}"
        )
    best = max((r["held"] for r in rows), default=0)
    print(f"max streams held: {best}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
