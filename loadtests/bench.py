"""Run the ssehub benchmark suite against ssehub, nginx+nchan and a naive FastAPI hub.

    python -m loadtests.bench                 # everything, ~17-20 minutes
    python -m loadtests.bench --quick         # smaller sizes, ~4.5-5.5 minutes
    python -m loadtests.bench --systems hub --scenarios many   # 1M channels forgotten, ~2 minutes
    python -m loadtests.bench --systems hub,nchan --scenarios fanout --fanout 100,1000
    python -m loadtests.bench --systems hub,hub-redis --scenarios fanout,publish \\
        --fanout 1000 --publish-connections 8 --duration 3 --no-ceiling   # memory vs Redis, ~1 minute

Servers run pinned to core 0 (taskset -c 0), the generator (this process and
its workers) on core 1.  Results go to loadtests/results/<timestamp>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import report, scenarios
from loadtests.common import machine_info, pin_current_process, raise_nofile_limit
from loadtests.gen import ceiling
from loadtests.gen.pool import GeneratorPool, workers_for
from loadtests.peers.naive.run import NaiveServer
from loadtests.peers.nchan.run import NchanServer
from loadtests.scenarios import Sizes
from loadtests.servers import HubRedisServer, HubServer, Server, hub_available

log = logging.getLogger("loadtests.bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_CORE, GENERATOR_CORE = 0, 1
ALL_SYSTEMS = ("hub", "hub-redis", "nchan", "naive", "naive-pool")
ALL_SCENARIOS = ("connections", "fanout", "latency", "channels", "waves", "publish", "many")
# The Redis-broker hub runs the scenarios that cross the Redis hop on every event (the
# others would measure the same node code again); compare it with "hub" of the same run.
SCENARIOS_FOR = {"hub-redis": ("fanout", "publish")}
# Scenarios only some systems run: "many" measures how the memory broker forgets
# expired channels (HUB_HISTORY_TTL); nchan and the naive peer have no such expiry.
SYSTEMS_FOR = {"many": ("hub",)}

FACTORIES: dict[str, Callable[[int | None], Server]] = {
    "hub": lambda core: HubServer(core),
    "hub-redis": lambda core: HubRedisServer(core),
    "nchan": lambda core: NchanServer(core),
    "naive": lambda core: NaiveServer(core),
    # The same naive app with a 20,000-connection redis pool, to measure the design past 100 streams.
    "naive-pool": lambda core: NaiveServer(core, max_connections=20_000),
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in _csv(text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma list of %(default)s")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma list of %(default)s")
    p.add_argument("--quick", action="store_true", help="smaller sizes and 3 s publishing windows")
    p.add_argument("--connections", type=_ints, help="idle stream counts, e.g. 1000,10000,19000")
    p.add_argument("--fanout", type=_ints, help="subscriber counts, e.g. 100,1000,5000")
    p.add_argument("--duration", type=float, help="publishing seconds per measurement")
    p.add_argument("--wave-size", type=int)
    p.add_argument("--waves", type=int)
    p.add_argument("--publish-connections", type=_ints, help="publishing connection counts, e.g. 8,32")
    p.add_argument("--many-channels", type=int, help="channels of the many scenario (one event each)")
    p.add_argument("--no-ceiling", action="store_true", help="skip measuring the generator's own ceiling")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/generator to cores 0/1")
    p.add_argument("--out", type=Path, help="output directory (default results/<timestamp>)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.connections:
        sizes.connections = args.connections
    if args.fanout:
        sizes.fanout = args.fanout
    if args.duration:
        sizes.duration_s = args.duration
    if args.wave_size:
        sizes.wave_size = args.wave_size
    if args.waves:
        sizes.waves = args.waves
    if args.publish_connections:
        sizes.publish_connections = args.publish_connections
    if args.many_channels:
        sizes.many_channels = args.many_channels
    return sizes


def run_scenario(name: str, server: Server, pool: GeneratorPool, sizes: Sizes) -> Any:
    """One scenario (all its sizes) against a started server."""
    if name == "connections":
        return [scenarios.connections(server, pool, n) for n in sizes.connections]
    if name == "fanout":
        return [scenarios.fanout(server, pool, s, sizes.duration_s) for s in sizes.fanout]
    if name == "latency":
        return scenarios.latency(
            server, pool, sizes.latency_subscribers, sizes.latency_rate, sizes.duration_s
        )
    if name == "channels":
        return scenarios.channels(server, pool, sizes.channel_subscribers, sizes.channels, sizes.duration_s)
    if name == "waves":
        return scenarios.waves(server, pool, sizes.wave_size, sizes.waves)
    if name == "publish":  # one connection count per server (see run_system)
        (n,) = sizes.publish_connections
        return [scenarios.publish(server, n, sizes.publish_channels, sizes.duration_s)]
    if name == "many":
        return scenarios.many(server, sizes.many_channels, sizes.many_connections, sizes.many_ttl_s)
    raise ValueError(name)


def run_system(
    system: str, wanted: list[str], pool: GeneratorPool, sizes: Sizes, core: int | None
) -> dict[str, Any]:
    """Every wanted scenario against one system, each on a freshly started server; the
    publish scenario on a fresh one per connection count (what one count leaves behind,
    such as nchan's full message buffers, must not count against the next)."""
    out: dict[str, Any] = {"errors": []}
    for scen in wanted:
        if scen not in SCENARIOS_FOR.get(system, ALL_SCENARIOS) or system not in SYSTEMS_FOR.get(
            scen, ALL_SYSTEMS
        ):
            continue
        if scen == "publish":
            parts = [dataclasses.replace(sizes, publish_connections=(n,)) for n in sizes.publish_connections]
        else:
            parts = [sizes]
        for part in parts:
            result = _run_on_fresh_server(system, scen, pool, part, core, out)
            if isinstance(result, list) and len(parts) > 1:
                out.setdefault(scen, []).extend(result)
            elif result is not None:
                out[scen] = result
    return out


def _run_on_fresh_server(
    system: str, scen: str, pool: GeneratorPool, sizes: Sizes, core: int | None, out: dict[str, Any]
) -> Any:
    server = FACTORIES[system](core)
    server.extra_env.update(scenarios.server_env(scen, sizes))
    t0 = time.monotonic()
    result = None
    try:
        server.start()
        log.info("%s / %s ...", system, scen)
        result = run_scenario(scen, server, pool, sizes)
        if not server.alive():
            out["errors"].append(f"{scen}: server exited; log tail: {server.log_tail(600)!r}")
        _note_server_errors(out, scen, server)
    except Exception as exc:
        log.exception("%s / %s failed", system, scen)
        out["errors"].append(f"{scen}: {type(exc).__name__}: {exc}"[:1500])
        pool.close_streams_safely()
    finally:
        server.stop()
    log.info("%s / %s done in %.1fs", system, scen, time.monotonic() - t0)
    return result


def _note_server_errors(out: dict[str, Any], scen: str, server: Server) -> None:
    """Keep the server's log tail when it logged errors: the hub may still be in progress."""
    tail = server.log_tail(4000)
    if "Traceback" in tail or "ERROR" in tail:
        out.setdefault("server_log_tail", {})[scen] = tail[-2500:]
        out["errors"].append(f"{scen}: the server logged errors (see server_log_tail)")


def measure_ceiling(quick: bool) -> list[dict[str, object]]:
    duration = 3.0 if quick else 5.0
    return [ceiling.measure(1000, batch, duration, SERVER_CORE) for batch in (1, 10)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    raise_nofile_limit()
    sizes = sizes_from(args)
    systems, wanted = _csv(args.systems), _csv(args.scenarios)
    if "hub" in " ".join(systems) and not hub_available():
        log.warning("hub/cli.py or hub/__main__.py missing: skipping the hub systems")
        systems = [s for s in systems if not s.startswith("hub")]
    pinned = not args.no_pin and pin_current_process({GENERATOR_CORE})
    core = SERVER_CORE if pinned else None
    pinning = (
        f"Servers pinned to core {SERVER_CORE} (taskset -c {SERVER_CORE}), "
        f"generator on core {GENERATOR_CORE}."
        if pinned
        else "Not pinned: server and generator share all cores."
    )
    log.info(pinning)
    started = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "started": started, "machine": machine_info(), "pinning": pinning,
        "sizes": vars(sizes), "systems": {},
    }  # fmt: skip
    if not args.no_ceiling:
        results["generator_ceiling"] = measure_ceiling(args.quick)
    streams = max([*sizes.connections, sizes.channel_subscribers, sizes.wave_size, *sizes.fanout])
    with GeneratorPool(workers_for(streams)) as pool:
        for system in systems:
            results["systems"][system] = run_system(system, wanted, pool, sizes, core)
    outdir = args.out or RESULTS_DIR / started
    report.write_all(results, outdir)
    print(f"\n{pinning}\nResults: {outdir}")
    for line in report.summary_lines(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
