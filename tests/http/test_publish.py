"""The raw publish endpoint: body limits, CORS, and a client that leaves mid-body."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import client, open_stream
from tests.support.procs import HubProcess, running_hub, wait_until

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def strict_hub() -> Iterator[HubProcess]:
    """Small body limit, and CORS for one origin only."""
    with running_hub({"HUB_MAX_BODY_BYTES": "2000", "HUB_CORS_ORIGINS": "https://app.example"}) as hub:
        yield hub


def test_declared_body_over_the_limit_is_413_before_reading(strict_hub: HubProcess) -> None:
    body = b'{"data": "' + b"x" * 3000 + b'"}'
    r = httpx.post(strict_hub.url + "/channels/c/events", headers=JSON, content=body)
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


def test_chunked_body_over_the_limit_is_413(strict_hub: HubProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"data": "'
        for _ in range(10):
            yield b"x" * 500  # no Content-Length: the limit is counted as it arrives
        yield b'"}'

    r = httpx.post(strict_hub.url + "/channels/c/events", headers=JSON, content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


def test_chunked_body_under_the_limit_is_published(strict_hub: HubProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"data": '
        yield b'{"n": 1}}'

    r = httpx.post(strict_hub.url + "/channels/chunky/events", headers=JSON, content=chunks())
    assert r.status_code == 202, r.text
    assert r.json()["channel"] == "chunky"
    listing = httpx.get(strict_hub.url + "/channels", params={"prefix": "chunky"}).json()["channels"]
    assert [c["last_id"] for c in listing if c["channel"] == "chunky"] == [r.json()["id"]]


def test_cors_on_publish_for_the_allowed_origin_only(strict_hub: HubProcess) -> None:
    url = strict_hub.url + "/channels/c/events"
    allowed = httpx.post(url, headers={**JSON, "Origin": "https://app.example"}, content=b'{"data":1}')
    assert allowed.status_code == 202
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["vary"] == "Origin"
    refused = httpx.post(url, headers={**JSON, "Origin": "https://evil.example"}, content=b'{"data":1}')
    assert refused.status_code == 403  # no publish credential: a foreign page may not publish (CSRF)
    assert "access-control-allow-origin" not in refused.headers
    # errors carry the header too, or the browser hides the JSON body from the page
    bad = httpx.post(url, headers={**JSON, "Origin": "https://app.example"}, content=b"{nope")
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == "https://app.example"


def test_preflight_for_a_json_publish_is_answered(strict_hub: HubProcess) -> None:
    r = httpx.options(
        strict_hub.url + "/channels/c/events",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]


def test_client_leaving_mid_body_publishes_nothing_and_the_hub_serves_on(strict_hub: HubProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_hub.port)) as sock:
        sock.sendall(
            b"POST /channels/halfway/events HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"data": "'
        )
    wait_until(
        lambda: httpx.get(strict_hub.url + "/healthz").status_code == 200, what="the hub answers after"
    )
    listing = httpx.get(strict_hub.url + "/channels", params={"prefix": "halfway"}).json()["channels"]
    names = [c["channel"] for c in listing]
    assert "halfway" not in names
    assert "Traceback" not in strict_hub.log()


@pytest.mark.anyio
async def test_integers_beyond_64_bits_reach_subscribers_exactly(strict_hub: HubProcess) -> None:
    # orjson alone turned 123456789012345678901234567890 into 1.2345678901234568e+29
    data = b'{"n":123456789012345678901234567890,"m":-18446744073709551617,"id":9007199254740993,"f":0.1}'
    url = strict_hub.url + "/channels/bigint"
    async with client() as http, open_stream(http, url + "/stream") as stream:
        single = await http.post(url + "/events", headers=JSON, content=b'{"data": ' + data + b"}")
        batch = await http.post(
            url + "/events", headers=JSON, content=b'[{"data": 1}, {"data": ' + data + b"}]"
        )
        assert (single.status_code, batch.status_code) == (202, 202), (single.text, batch.text)
        events = await stream.wait_for(3)
    assert [e.data for e in events] == [data.decode(), "1", data.decode()]


def test_json_too_deep_to_republish_is_a_400_without_a_traceback(strict_hub: HubProcess) -> None:
    body = b'{"data": ' + b"[" * 300 + b"]" * 300 + b"}"
    r = httpx.post(strict_hub.url + "/channels/deep/events", headers=JSON, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert "64 levels" in r.json()["detail"]
    assert "Traceback" not in strict_hub.log()
