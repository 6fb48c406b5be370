"""The shipped nginx.conf's safe defaults, with real nginx in front of real nodes:
publishes past the rate limit get a 429, streams past the per-address limit are
refused (an EventSource told to come back), and a subscriber's token in the
query string never reaches the access log. (Which addresses may publish is
checked on the parsed config, tests/deploy/test_nginx_conf.py: every test
client here is on loopback, which is allowed.)"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import anyio
import httpx
import jwt
import pytest

from tests.support.client import client, open_stream
from tests.support.nginx import NGINX_CONF, Cluster, eventually, running_cluster
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration

JWT_SECRET = "nginx-limits-test-secret-of-32-characters-or-more"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    env = {"HUB_PRIVATE_CHANNELS": "private-*", "HUB_JWT_SECRET": JWT_SECRET}
    with running_cluster(env) as running:
        yield running


def config_number(pattern: str) -> int:
    """A number of the shipped nginx.conf (the tests use its own limits)."""
    match = re.search(pattern, NGINX_CONF.read_text())
    assert match, pattern
    return int(match.group(1))


async def published_total(http: httpx.AsyncClient, cluster: Cluster) -> int:
    total = 0
    for node in cluster.nodes:
        metrics = (await http.get(f"{node.url}/metrics", headers=cluster.auth)).text
        for line in metrics.splitlines():
            if line.startswith("ssehub_events_published_total "):
                total += int(float(line.split()[1]))
    return total


@pytest.mark.anyio
async def test_a_burst_of_publishes_past_the_limit_gets_the_hubs_429_from_nginx(cluster: Cluster) -> None:
    burst = config_number(r"limit_req zone=ssehub_publishes burst=(\d+) nodelay;")
    url = f"{cluster.nginx.url}/channels/flood/events"
    statuses: list[int] = []
    refused: list[httpx.Response] = []
    async with client() as http:
        before = await published_total(http, cluster)

        async def one() -> None:
            response = await http.post(url, json={"data": "x"}, headers=cluster.auth)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused.append(response)

        # Waves of 50 at once, far faster than the zone's rate refills: the
        # burst is used up within the first waves.
        start = time.monotonic()
        while not refused and len(statuses) < 20 * burst:
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(one)
        elapsed = time.monotonic() - start
        assert refused, f"no 429 in {len(statuses)} publishes over {elapsed:.1f}s"
        assert set(statuses) == {202, 429}, set(statuses)
        # The burst passed before the first refusal: a catching-up publisher is not slowed.
        assert statuses.count(202) > burst
        response = refused[0]
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "rate_limited"
        # Refused at the edge: only the accepted publishes reached a node.
        assert await published_total(http, cluster) - before == statuses.count(202)

        async def accepted_again() -> bool:
            answer = await http.post(url, json={"data": "later"}, headers=cluster.auth)
            return answer.status_code == 202

        # A rate, not a ban: the bucket refills.
        await eventually(accepted_again, 10, "a publish accepted after the burst")
    assert "limiting requests" in cluster.nginx.log()


@pytest.mark.anyio
async def test_a_token_in_the_query_string_never_reaches_the_access_log(cluster: Cluster) -> None:
    secret = jwt.encode(
        {"hub": {"subscribe": ["private-*"]}, "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256"
    )
    base = cluster.nginx.url
    async with client() as http:
        # The private channel admits the stream only with the token: it did pass through nginx.
        async with open_stream(http, f"{base}/channels/private-log/stream?access_token={secret}") as stream:
            assert stream.response.status_code == 200
        async with open_stream(http, f"{base}/channels/private-log/stream?access_token=SECRET-bad") as stream:
            assert stream.response.status_code == 401
        await http.get(f"{base}/channels?access_token=SECRET-admin&prefix=private", headers=cluster.auth)

    def lines() -> list[str]:
        return [line for line in cluster.nginx.access_log() if "/channels/private-log/stream" in line]

    async def both_logged() -> bool:
        return len(lines()) >= 2

    await eventually(both_logged, 10, "the two streams in nginx's access log")
    assert all('"GET /channels/private-log/stream HTTP/1.1" ' in line for line in lines()), lines()
    log = "\n".join(cluster.nginx.access_log())
    for leaked in (secret, secret.split(".")[1], "SECRET", "access_token", "prefix=private"):
        assert leaked not in log, leaked


def open_raw_stream(port: int, path: str, accept: str | None = None) -> tuple[socket.socket, bytes]:
    """A stream request on a socket of its own; returns it with the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"GET {path} HTTP/1.1\r\nHost: hub\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    sock.sendall((head + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return sock, data


def test_streams_past_the_per_address_limit_are_refused_and_event_sources_told_to_come_back(
    cluster: Cluster,
) -> None:
    limit = config_number(r"limit_conn ssehub_streams (\d+);")
    port = cluster.nginx.http_port
    with ExitStack() as held:
        for n in range(limit):
            sock, head = open_raw_stream(port, f"/channels/crowd-{n % 5}/stream")
            held.callback(sock.close)
            assert head.startswith(b"HTTP/1.1 200"), (n, head[:200])

        url = f"{cluster.nginx.url}/channels/crowd-0/stream"
        with httpx.Client() as http:
            refused = http.get(url)
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/json"
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["error"] == "too_many_streams"

            # A browser's EventSource would give up for good on a 429: it gets a
            # 200 event stream with a retry: instead, and comes back later.
            told = http.get(url, headers={"Accept": "text/event-stream"})
        assert told.status_code == 200
        assert told.headers["content-type"].startswith("text/event-stream")
        assert told.text == "retry: 5000\n: come back later\n\n"

    # Once those streams close, the address may open new ones.
    def admitted() -> bool:
        sock, head = open_raw_stream(port, "/channels/crowd-0/stream")
        sock.close()
        return head.startswith(b"HTTP/1.1 200")

    wait_until(admitted, 10, "a stream admitted after the others closed")
