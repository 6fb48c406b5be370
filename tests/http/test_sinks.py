"""Which sink a stream gets, in-process under a real uvicorn, and both work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from hub.http.app import HubApp
from hub.http.sinks import AsgiSink, TransportSink
from hub.settings import Settings
from tests.support.client import client, open_stream, publish
from tests.support.procs import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@asynccontextmanager
async def serving(http_impl: str, **settings: object) -> AsyncIterator[tuple[HubApp, str]]:
    port = free_port()
    app = HubApp(Settings(port=port, **settings))  # type: ignore[arg-type]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http_impl, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        app.drain()
        await task


@pytest.mark.parametrize(("impl", "kind"), [("httptools", TransportSink), ("h11", AsgiSink)])
async def test_stream_uses_the_fast_sink_under_httptools_and_asgi_elsewhere(impl: str, kind: type) -> None:
    async with serving(impl) as (app, base), client() as http:
        async with open_stream(http, f"{base}/channels/c/stream") as s:
            assert app.hub is not None
            (sub,) = app.hub.subscribers
            assert isinstance(sub.sink, kind)
            for i in range(3):
                await publish(http, base, "c", i)
            assert [e.data for e in await s.wait_for(3)] == ["0", "1", "2"]
        # The client left: the hub forgets the stream.
        async with asyncio.timeout(5):
            while app.hub.subscribers:
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_drain_ends_streams_with_a_jittered_retry(impl: str) -> None:
    async with serving(impl, retry_ms=2000) as (app, base), client() as http:
        async with open_stream(http, f"{base}/channels/c/stream") as s:
            assert app.drain() == 1
            await s.wait_closed()
            retry_lines = [line for line in bytes(s.raw).split(b"\n") if line.startswith(b"retry: ")]
            assert len(retry_lines) == 2  # the greeting's and the goodbye's
            assert 1000 <= int(retry_lines[-1][7:]) <= 3000
        refused = await http.get(f"{base}/channels/c/stream")
        assert refused.status_code == 503
        assert refused.json()["error"] == "unavailable"


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_a_long_replay_is_paced_through_either_sink_and_then_goes_live(impl: str) -> None:
    # The replay waits for the sink to drain each slice: with the portable sink, its
    # writer must already be running while the stream attaches.
    async with serving(impl, stall_seconds=5) as (app, base), client() as http:
        pad = "x" * 20_000
        ids = [await publish(http, base, "c", {"i": i, "pad": pad}) for i in range(40)]  # 800 KB
        async with open_stream(http, f"{base}/channels/c/stream", {"Last-Event-ID": "earliest"}) as s:
            assert [e.id for e in await s.wait_for(40, timeout=4)] == ids
            ids.append(await publish(http, base, "c", "live"))
            assert [e.id for e in await s.wait_for(41, timeout=4)] == ids
        assert app.hub is not None
        assert app.hub.stats.slow_cut == 0
