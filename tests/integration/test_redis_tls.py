"""The Redis broker over TLS (rediss://) to a redis-server with only a TLS port.

A throwaway CA is made with the openssl CLI for each test module; Redis checks
the hub's client certificate against it (``--tls-auth-clients yes``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.client import client, open_stream, publish
from tests.support.procs import HubProcess, wait_until
from tests.support.redis_procs import Certificates, RedisProcess, make_certificates, start_tls_redis

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates(Path(tempfile.mkdtemp(prefix="hub-tls-")))


@pytest.fixture
def tls_redis(certs: Certificates) -> Iterator[RedisProcess]:
    server = start_tls_redis(certs)
    yield server
    server.stop()


def tls_node(server: RedisProcess, certs: Certificates, **env: str) -> HubProcess:
    return HubProcess(
        {
            "HUB_REDIS_URL": f"rediss://127.0.0.1:{server.port}/0",
            "HUB_REDIS_CA_CERT": str(certs.ca),
            "HUB_REDIS_CLIENT_CERT": str(certs.client_cert),
            "HUB_REDIS_CLIENT_KEY": str(certs.client_key),
            "HUB_HEARTBEAT_SECONDS": "0.5",
            **env,
        }
    )


async def test_two_nodes_over_tls_deliver_and_resume_across_nodes(
    tls_redis: RedisProcess, certs: Certificates
) -> None:
    a, b = tls_node(tls_redis, certs), tls_node(tls_redis, certs)
    try:
        a.start()
        b.start()
        async with client() as http, open_stream(http, f"{b.url}/channels/secure/stream") as stream:
            ids = [await publish(http, a.url, "secure", {"n": n}) for n in range(3)]
            events = await stream.wait_for(3)
            assert [e.id for e in events] == ids
            # Resume on the other node, from Redis over TLS.
            headers = {"Last-Event-ID": ids[0]}
            async with open_stream(http, f"{a.url}/channels/secure/stream", headers) as resumed:
                assert [e.id for e in await resumed.wait_for(2)] == ids[1:]
    finally:
        a.stop()
        b.stop()


def test_a_redis_whose_certificate_the_hub_cannot_verify_is_never_ready(
    tls_redis: RedisProcess, certs: Certificates
) -> None:
    # No CA given: the system's CAs do not know the throwaway one.
    hub = tls_node(tls_redis, certs, HUB_REDIS_CA_CERT="")
    hub.env.pop("HUB_REDIS_CA_CERT")
    hub.start(ready=False)
    try:
        wait_until(lambda: "certificate verify failed" in hub.log(), 20, "the hub to log the TLS failure")
        assert httpx.get(f"{hub.url}/readyz", timeout=5).status_code == 503
    finally:
        hub.stop()


def test_without_a_client_certificate_redis_refuses_the_hub(
    tls_redis: RedisProcess, certs: Certificates
) -> None:
    hub = tls_node(tls_redis, certs)
    for name in ("HUB_REDIS_CLIENT_CERT", "HUB_REDIS_CLIENT_KEY"):
        hub.env.pop(name)
    hub.start(ready=False)
    try:
        wait_until(lambda: "pub/sub connection lost or refused" in hub.log(), 20, "the hub to log it")
        assert httpx.get(f"{hub.url}/readyz", timeout=5).status_code == 503
    finally:
        hub.stop()


def test_tls_files_without_a_tls_url_stop_start_up(certs: Certificates) -> None:
    hub = HubProcess({"HUB_REDIS_URL": "redis://127.0.0.1:6379/0", "HUB_REDIS_CA_CERT": str(certs.ca)})
    hub.start(ready=False)
    assert hub.proc is not None
    assert hub.proc.wait(30) == 2
    assert "need a TLS HUB_REDIS_URL" in hub.log()
