"""A node goes away mid-stream; its client, reconnecting through nginx as
EventSource does, ends with every event exactly once, in order."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import anyio
import httpx
import pytest

from hub.sse import SSEEvent
from tests.support.client import Stream, client, open_stream, publish
from tests.support.nginx import Cluster, eventually, running_cluster
from tests.support.procs import HubProcess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SHUTDOWN_SECONDS = 2
EVENTS = 60


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    env = {
        "HUB_HEARTBEAT_SECONDS": "1",
        "HUB_RETRY_MS": "200",
        "HUB_SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
    }
    with running_cluster(env) as running:
        yield running


class Reconnecting:
    """What a browser's EventSource does: on every end of the stream, wait
    the last ``retry:`` and reconnect with ``Last-Event-ID``."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.finished: list[Stream] = []
        self.current: Stream | None = None

    @property
    def events(self) -> list[SSEEvent]:
        streams = [*self.finished, *([self.current] if self.current else [])]
        return [event for stream in streams for event in stream.events]

    async def run(self, want: int) -> None:
        # The first connect resumes from the start of the (fresh) channel, so
        # that no event is published before the node has subscribed to it;
        # what is tested is what happens after.
        last_id, retry_ms = "earliest", 3000
        while len(self.events) < want:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            async with open_stream(self.http, self.url, headers, first_bytes=False) as stream:
                assert stream.response.status_code == 200, stream.response.status_code
                self.current = stream
                before = sum(len(s.events) for s in self.finished)
                try:
                    await stream.wait_for(want - before, timeout=20)
                except AssertionError:
                    if not stream.closed:
                        raise
            self.finished.append(stream)
            self.current = None
            last_id = stream.parser.last_event_id or last_id
            retry_ms = stream.parser.retry if stream.parser.retry is not None else retry_ms
            if len(self.events) < want:
                # The reconnection delay EventSource keeps: behaviour, not synchronisation.
                await anyio.sleep(retry_ms / 1000)


async def serving_node(http: httpx.AsyncClient, cluster: Cluster, channel: str) -> HubProcess:
    found: list[HubProcess] = []

    async def one_node_holds_it() -> bool:
        found.clear()
        for node in cluster.nodes:
            answer = await http.get(f"{node.url}/channels", params={"prefix": channel}, headers=cluster.auth)
            listing = answer.json()["channels"]
            if any(c["channel"] == channel and c["subscribers"] for c in listing):
                found.append(node)
        return len(found) == 1

    await eventually(one_node_holds_it, 10, f"a node with a subscriber of {channel}")
    return found[0]


async def lose_a_node_mid_stream(cluster: Cluster, sig: int) -> tuple[Reconnecting, list[str], HubProcess]:
    """Stream through nginx, publish EVENTS to the other node, send ``sig`` to
    the streaming node a quarter of the way; returns the client, the published
    ids, and the node that got the signal."""
    channel = f"failover-{sig}"
    published: list[str] = []
    async with client() as http:
        reader = Reconnecting(http, f"{cluster.nginx.url}/channels/{channel}/stream")
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.run, EVENTS)
            streaming = await serving_node(http, cluster, channel)
            # Publishes go straight to the node that stays: what is tested is the
            # stream's failover. (A POST caught by a closing node can fail with
            # 502, and a publisher has to retry that itself.)
            survivor = next(node for node in cluster.nodes if node is not streaming)

            async def publisher() -> None:
                for n in range(EVENTS):
                    published.append(
                        await publish(http, survivor.url, channel, {"n": n}, headers=cluster.auth)
                    )
                    await anyio.sleep(0.02)  # a steady trickle across the failover

            tg.start_soon(publisher)

            async def a_quarter_arrived() -> bool:
                return len(reader.events) >= EVENTS // 4

            await eventually(a_quarter_arrived, 10, "the first events")
            streaming.signal(sig)
    return reader, published, streaming


def assert_exactly_once_in_order(reader: Reconnecting, published: list[str]) -> None:
    assert [json.loads(e.data)["n"] for e in reader.events] == list(range(EVENTS))
    assert [e.id for e in reader.events] == published
    assert len(reader.finished) >= 2, "the client never reconnected"


async def test_after_sigterm_the_client_resumes_on_the_other_node_with_nothing_lost(cluster: Cluster) -> None:
    reader, published, stopped = await lose_a_node_mid_stream(cluster, signal.SIGTERM)
    assert_exactly_once_in_order(reader, published)
    # The drained node told its client to come back, then stopped by itself
    # in time. (uvicorn re-raises SIGTERM once its shutdown is complete, so a
    # clean drain ends with that signal's status: systemd counts it a success.)
    first = bytes(reader.finished[0].raw)
    assert b": come back later\n" in first, first[-200:]
    assert stopped.proc is not None
    assert stopped.proc.wait(SHUTDOWN_SECONDS + 5) in (0, -signal.SIGTERM)
    assert "hub stopped" in stopped.log()


async def test_after_sigkill_the_client_resumes_on_the_other_node_with_nothing_lost(cluster: Cluster) -> None:
    reader, published, killed = await lose_a_node_mid_stream(cluster, signal.SIGKILL)
    assert_exactly_once_in_order(reader, published)
    assert b"come back later" not in bytes(reader.finished[0].raw)
    assert killed.proc is not None
    assert killed.proc.wait(5) == -signal.SIGKILL
