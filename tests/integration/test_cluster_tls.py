"""The Redis broker on a Redis Cluster over TLS (``rediss+cluster://``): TLS only, between
the nodes too, client certificates checked against a throwaway CA."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import client, open_stream, publish
from tests.support.procs import HubProcess
from tests.support.redis_procs import ClusterSetup, make_certificates

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def tls_cluster() -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tls=make_certificates(Path(tempfile.mkdtemp(prefix="hub-cluster-tls-"))))
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


async def test_two_nodes_on_a_tls_cluster_deliver_and_resume_on_every_shard(
    tls_cluster: ClusterSetup,
) -> None:
    certs = tls_cluster.tls
    assert certs is not None
    env = {
        "HUB_REDIS_URL": tls_cluster.url,
        "HUB_REDIS_CA_CERT": str(certs.ca),
        "HUB_REDIS_CLIENT_CERT": str(certs.client_cert),
        "HUB_REDIS_CLIENT_KEY": str(certs.client_key),
        "HUB_HEARTBEAT_SECONDS": "0.5",
    }
    assert tls_cluster.url.startswith("rediss+cluster://")
    # One channel per master: every shard's connection is TLS.
    names: dict[int, str] = {}
    n = 0
    while len(names) < tls_cluster.masters:
        names.setdefault(tls_cluster.owner(f"hub:{{ch{n}}}:log").port, f"ch{n}")
        n += 1
    a, b = HubProcess(env), HubProcess(env)
    try:
        a.start()
        b.start()
        async with client() as http:
            for channel in names.values():
                async with open_stream(http, f"{b.url}/channels/{channel}/stream") as stream:
                    ids = [await publish(http, a.url, channel, {"n": i}) for i in range(3)]
                    assert [e.id for e in await stream.wait_for(3)] == ids
                resumed_url = f"{a.url}/channels/{channel}/stream"
                async with open_stream(http, resumed_url, {"Last-Event-ID": ids[0]}) as resumed:
                    assert [e.id for e in await resumed.wait_for(2)] == ids[1:]
    finally:
        a.stop()
        b.stop()
