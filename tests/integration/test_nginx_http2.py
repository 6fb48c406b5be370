"""HTTP/2 over TLS through the shipped nginx.conf: many streams, one connection."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import AsyncExitStack

import anyio
import pytest

from tests.support.client import Stream, client, open_stream, publish
from tests.support.nginx import Cluster, eventually, running_cluster
from tests.support.procs import CI

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

try:
    import h2  # noqa: F401  (httpx speaks HTTP/2 only with it)
except ImportError:  # pragma: no cover
    if CI:
        raise
    pytest.skip("httpx needs the h2 package for HTTP/2 (dev extras)", allow_module_level=True)

# Well past the six HTTP/1.1 connections a browser allows per origin.
STREAMS = 40
# Nothing published while a node subscribes to Redis is missed.
EARLIEST = {"Last-Event-ID": "earliest"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as running:
        yield running


async def test_many_streams_share_one_http2_connection_and_all_get_each_event(cluster: Cluster) -> None:
    nginx = cluster.nginx
    tls = ssl.create_default_context(cafile=str(nginx.cert))
    url = f"https://127.0.0.1:{nginx.https_port}/channels/h2/stream"
    async with client(http2=True, verify=tls) as http, AsyncExitStack() as stack:
        # The first stream settles the connection (TLS, ALPN h2); the others
        # are opened all at once on it.
        streams = [await stack.enter_async_context(open_stream(http, url, EARLIEST))]

        async def one() -> None:
            streams.append(await stack.enter_async_context(open_stream(http, url, EARLIEST)))

        async with anyio.create_task_group() as tg:
            for _ in range(STREAMS - 1):
                tg.start_soon(one)
        assert {s.response.http_version for s in streams} == {"HTTP/2"}

        event_id = await publish(
            http, f"https://127.0.0.1:{nginx.https_port}", "h2", {"hello": "h2"}, headers=cluster.auth
        )

        async def receive(stream: Stream) -> None:
            (event,) = await stream.wait_for(1, timeout=5)
            assert event.id == event_id

        async with anyio.create_task_group() as tg:
            for stream in streams:
                tg.start_soon(receive, stream)

    # nginx logs each stream when it ends; all of them name one connection.
    def stream_lines() -> list[str]:
        return [line for line in nginx.access_log() if "/channels/h2/stream HTTP/2.0" in line]

    async def all_logged() -> bool:
        return len(stream_lines()) >= STREAMS

    await eventually(all_logged, 10, f"{STREAMS} stream lines in nginx's access log")
    connections = re.findall(r" conn=(\d+) ", "\n".join(stream_lines()))
    assert len(connections) == STREAMS
    assert len(set(connections)) == 1, connections
