"""Through the shipped nginx.conf, two hub nodes on one Redis: nothing is held back."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import client, open_stream, publish
from tests.support.nginx import Cluster, eventually, running_cluster

pytestmark = pytest.mark.integration

HEARTBEAT = 0.3


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster({"HUB_HEARTBEAT_SECONDS": str(HEARTBEAT)}) as running:
        yield running


@pytest.mark.anyio
async def test_each_small_event_arrives_through_nginx_within_100ms_of_its_publish(cluster: Cluster) -> None:
    base = cluster.nginx.url
    # "earliest": events published while the node is still subscribing to
    # Redis are replayed, not missed (a live-only stream is live only once
    # the subscription is; the client cannot see when that is).
    url = f"{base}/channels/latency/stream"
    async with client() as http, open_stream(http, url, {"Last-Event-ID": "earliest"}) as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        delays = []
        for n in range(10):
            start = time.monotonic()
            # least_conn sends the publish to the node that does not hold the
            # stream, so each event also crosses Redis.
            await publish(http, base, "latency", {"n": n}, headers=cluster.auth)
            await stream.wait_for(n + 1, timeout=5)
            delays.append(time.monotonic() - start)
        assert [json.loads(e.data) for e in stream.events] == [{"n": n} for n in range(10)]
        assert max(delays) < 0.1, [f"{d * 1000:.1f} ms" for d in delays]


@pytest.mark.anyio
async def test_heartbeats_reach_the_client_while_a_stream_is_idle(cluster: Cluster) -> None:
    async with client() as http, open_stream(http, f"{cluster.nginx.url}/channels/idle/stream") as stream:
        # Three heartbeat comment lines in a row, each due within 1.25
        # intervals: a buffering proxy would hold these few bytes back.
        await stream.wait_bytes(b": ok\n:\n:\n:\n", timeout=3 * HEARTBEAT * 1.25 + 1)
        assert stream.events == []


@pytest.mark.anyio
async def test_two_streams_are_spread_over_both_nodes(cluster: Cluster) -> None:
    url = f"{cluster.nginx.url}/channels/spread/stream"
    async with client() as http:

        async def no_streams_left() -> bool:  # from earlier tests: least_conn counts them
            return [(await http.get(f"{n.url}/readyz")).json()["streams"] for n in cluster.nodes] == [0, 0]

        await eventually(no_streams_left, 10, "earlier streams to close")
        async with open_stream(http, url), open_stream(http, url):
            counts = [(await http.get(f"{n.url}/readyz")).json()["streams"] for n in cluster.nodes]
        assert counts == [1, 1]


@pytest.mark.anyio
async def test_a_publish_over_the_body_limit_is_refused_by_nginx_in_the_hubs_json_shape(
    cluster: Cluster,
) -> None:
    async with client() as http:
        body = b'{"data": "' + b"x" * (2 << 20) + b'"}'
        response = await http.post(
            f"{cluster.nginx.url}/channels/big/events",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "body_too_large"
    assert "client intended to send too large body" in cluster.nginx.log()


@pytest.mark.anyio
async def test_a_publish_within_the_limit_passes_through_nginx(cluster: Cluster) -> None:
    async with client() as http:
        data = "x" * 60_000
        event_id = await publish(http, cluster.nginx.url, "big-enough", data, headers=cluster.auth)
        async with open_stream(
            http, f"{cluster.nginx.url}/channels/big-enough/stream", {"Last-Event-ID": "earliest"}
        ) as stream:
            (event,) = await stream.wait_for(1)
    assert (event.id, json.loads(event.data)) == (event_id, data)


def slow_cuts(http: httpx.Client, cluster: Cluster) -> int:
    total = 0
    for node in cluster.nodes:
        for line in http.get(f"{node.url}/metrics", headers=cluster.auth).text.splitlines():
            if line.startswith("ssehub_slow_cut_total "):
                total += int(float(line.split()[1]))
    return total


def test_a_client_that_stops_reading_is_cut_by_the_hub_not_absorbed_by_nginx(cluster: Cluster) -> None:
    # Buffered, nginx would take the whole backlog into a temp file and the
    # hub would never see the client fall behind.
    with httpx.Client() as http, socket.create_connection(("127.0.0.1", cluster.nginx.http_port)) as sock:
        before = slow_cuts(http, cluster)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"GET /channels/stalled/stream HTTP/1.1\r\nHost: hub\r\nAccept: text/event-stream\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then never read again
        events = f"{cluster.nodes[0].url}/channels/stalled/events"
        # At most 24 MB: many times what the kernel buffers on the way and the hub's limit.
        for n in range(400):
            assert http.post(events, json={"data": "x" * 60_000}, headers=cluster.auth).status_code == 202
            if n % 10 == 9 and slow_cuts(http, cluster) > before:
                break
        assert slow_cuts(http, cluster) == before + 1, f"not cut after {n + 1} events of 60 kB"
