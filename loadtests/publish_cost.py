"""What a publish costs the hub, step by step, measured in this process (no sockets).

    python -m loadtests.publish_cost                # the table of ARCHITECTURE.md's "What a publish costs"
    python -m loadtests.publish_cost --publishes 5000 --whole-only
    valgrind --tool=callgrind python -m loadtests.publish_cost --publishes N --whole-only

The connection (`HubHttpProtocol`, as `ssehub serve` builds it) is fed the bytes of a small
JSON publish over 8 connections with a transport that drops what is written, the event loop
turning every 8 publishes as it would between reads; each step of `HubApp.answer_now` is then
timed on its own. Best of five rounds: the machine is shared, compare figures of one run.
Under callgrind, the difference of two runs with different `--publishes` divided by the
difference of publishes is the instruction count per publish (repeatable to about 1%).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from hub.http.app import HubApp, create_app
from hub.http.auth import header_map
from hub.http.protocol import AnswersNow, HubHttpProtocol, protocol_class
from hub.http.publish import _Request
from hub.inputs import check_channel, parse_publish
from hub.settings import Settings

BODY = b'{"data":{"t":1234567890123,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
CHANNELS = 1000
CONNECTIONS = 8


def request(i: int) -> bytes:
    head = (
        b"POST /channels/c%d/events HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    return head % (i % CHANNELS, len(BODY)) + BODY


class DropTransport(asyncio.Transport):
    """A loopback client's socket that takes everything at once."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def scope_of(i: int) -> dict[str, Any]:
    """The scope the connection hands to ``answer_now`` for ``request(i)``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": f"/channels/c{i}/events",
        "raw_path": f"/channels/c{i}/events".encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(BODY)),
        ],
        "path_params": {"channel": f"c{i}"},
    }


def best_us(rounds: int, n: int, run: Callable[[int], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            run(i)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


async def through_connections(app: HubApp, now: AnswersNow, publishes: int, rounds: int) -> float:
    """us per publish fed to the connections as bytes, the loop turning between reads; ``now``
    answers them (the app itself, or :class:`Answered`)."""
    config = Config(app=app, log_level="warning", lifespan="off")
    config.load()
    cls = protocol_class(65536, 10.0, 64)
    cls.now = now
    state = ServerState()
    protos: list[HubHttpProtocol] = []
    for _ in range(CONNECTIONS):
        proto = cls(config, state, {}, asyncio.get_running_loop())
        proto.connection_made(DropTransport())
        protos.append(proto)
    requests = [request(i) for i in range(CHANNELS)]

    async def run(n: int, feed: bool) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            if feed:
                protos[i % CONNECTIONS].data_received(requests[i % CHANNELS])
            if i % CONNECTIONS == CONNECTIONS - 1:
                await asyncio.sleep(0)  # the loop turns between reads
        return time.perf_counter() - t0

    await run(min(publishes, 2000), True)  # warm up
    best = float("inf")
    for _ in range(rounds):
        idle = await run(publishes, False)
        best = min(best, (await run(publishes, True) - idle) / publishes * 1e6)
    return best


class Answered:
    """``answer_now`` with a fixed answer: what the connection costs without the publish."""

    body_limit = 1 << 20
    answer = (202, [(b"content-type", b"application/json")], b'{"channel":"c1","id":"1764000000000-0"}')

    def __init__(self, app: HubApp) -> None:
        self.takes_now = app.takes_now

    def answer_now(self, scope: dict[str, Any], body: bytes | None) -> Any:
        return self.answer


async def measure(publishes: int, whole_only: bool) -> None:
    app = create_app(Settings())
    await app.start()
    try:
        rounds = 1 if whole_only else 5
        whole = await through_connections(app, app, publishes, rounds)
        print(f"whole publish, through the connection: {whole:.2f} us")
        if whole_only:
            return
        rows = [("the connection", await through_connections(app, Answered(app), publishes, rounds))]
        rows += steps(app, publishes)
        for name, us in rows:
            print(f"{name}: {us:.2f} us")
        print(f"the calls between the steps: {whole - sum(us for _, us in rows):.2f} us")
    finally:
        await app.stop()


def steps(app: HubApp, n: int) -> list[tuple[str, float]]:
    """Each step of ``HubApp.answer_now`` on its own."""
    publish = app.publish
    scopes = [scope_of(i) for i in range(CHANNELS)]

    def fresh(i: int) -> None:
        scopes[i % CHANNELS].pop("hub.headers", None)  # the header map is made by admit

    def admit(i: int) -> None:
        fresh(i)
        app.admit(app._publish_route, scopes[i % CHANNELS])

    rows = [("admit", best_us(5, n, admit) - best_us(5, n, fresh))]
    for scope in scopes:
        header_map(scope)
    rows.append(("read the headers", best_us(5, n, lambda i: _Request(publish, scopes[i % CHANNELS]))))
    limits = publish.limits

    def validate(i: int) -> None:
        check_channel("c1")
        parse_publish("application/json", BODY, {}, limits)

    rows.append(("validate", best_us(5, n, validate)))
    payloads, _ = parse_publish("application/json", BODY, {}, limits)
    hub = app.state.hub
    assert hub is not None
    broker: Any = hub.broker
    rows.append(
        (
            "store and dispatch",
            best_us(5, n, lambda i: broker.publish_now(f"c{i % CHANNELS}", payloads, None)),
        )
    )
    accepted = best_us(5, n, lambda i: publish._accepted("c1", ["1764000000000-0"], False, []))
    rows.append(("answer", accepted + best_us(5, n, lambda i: publish._count(scopes[0], 202, 0.0))))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishes", type=int, default=20000, help="publishes per round")
    parser.add_argument(
        "--whole-only", action="store_true", help="one round of the whole path (for callgrind)"
    )
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the start-up warning about credentials
    uvloop.run(measure(args.publishes, args.whole_only))


if __name__ == "__main__":
    main()
