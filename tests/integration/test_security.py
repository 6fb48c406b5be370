"""Security against a real ``ssehub serve``: token expiry ending a stream, the
per-address stream cap, tokens kept out of logs, and raw-socket abuse."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from hub.tokens import mint
from tests.support.client import client, open_stream
from tests.support.procs import HubProcess, running_hub, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "integration-secret-" + "x" * 20
PUBLISH_TOKEN = "pub-token-0123456789"
AUTH = {"Authorization": f"Bearer {PUBLISH_TOKEN}"}


@pytest.fixture(scope="module")
def secured() -> Iterator[HubProcess]:
    env = {
        "HUB_JWT_SECRET": SECRET,
        "HUB_PRIVATE_CHANNELS": "user-*",
        "HUB_PUBLISH_TOKENS": PUBLISH_TOKEN,
        "HUB_MAX_STREAMS_PER_IP": "2",
        "HUB_TRUSTED_PROXIES": "127.0.0.1",
        # Every request is logged: the redaction is checked on those lines.
        "HUB_LOG_LEVEL": "debug",
    }
    with running_hub(env) as hub:
        yield hub


async def publish(http: httpx.AsyncClient, hub: HubProcess, channel: str, n: int) -> str:
    r = await http.post(f"{hub.url}/channels/{channel}/events", json={"data": {"n": n}}, headers=AUTH)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def test_a_stream_ends_with_hub_expired_at_its_token_exp_and_a_renewed_token_resumes(
    secured: HubProcess,
) -> None:
    channel = "user-expiry"
    headers = {"X-Forwarded-For": "192.0.2.10"}  # its own address, clear of the per-address cap
    async with client() as http:
        short = mint(SECRET, subscribe=[channel], ttl=1)
        url = f"{secured.url}/channels/{channel}/stream?access_token={short}"
        async with open_stream(http, url, headers) as stream:
            last = await publish(http, secured, channel, 1)
            await stream.wait_for(1)
            await stream.wait_closed(timeout=15)
            # Ended when the token stops being accepted: exp and the 5 s leeway for clocks.
            assert time.time() >= jwt.decode(short, options={"verify_signature": False})["exp"] + 5
        # hub.expired has no id: line (the client's cursor stays on the last event).
        assert [(e.type, e.id) for e in stream.events] == [("message", last), ("hub.expired", last)]
        assert b"\n\nevent: hub.expired\ndata: " in stream.raw
        assert json.loads(stream.events[1].data) == {"channel": channel}
        # Published while the client renews its token: nothing is lost.
        missed = [await publish(http, secured, channel, n) for n in (2, 3)]
        renewed = mint(SECRET, subscribe=[channel], ttl=60)
        url = f"{secured.url}/channels/{channel}/stream?access_token={renewed}"
        async with open_stream(http, url, {**headers, "Last-Event-ID": last}) as stream:
            await stream.wait_for(2)
        assert [e.id for e in stream.events] == missed
        # The expired token is refused from now on.
        r = await http.get(f"{secured.url}/channels/{channel}/stream?access_token={short}", headers=headers)
        assert r.status_code == 401


async def test_a_multi_channel_stream_is_told_every_channel_when_it_expires(secured: HubProcess) -> None:
    headers = {"X-Forwarded-For": "192.0.2.11"}
    async with client() as http:
        token = mint(SECRET, subscribe=["user-a", "user-b"], ttl=1)
        url = f"{secured.url}/stream?channel=user-a&channel=user-b&channel=news&access_token={token}"
        async with open_stream(http, url, headers) as stream:
            await stream.wait_closed(timeout=10)
        [expired] = stream.events
        assert expired.type == "hub.expired"
        assert expired.id == ""
        assert json.loads(expired.data) == {"channels": ["user-a", "user-b", "news"]}


async def test_streams_per_client_address_are_capped(secured: HubProcess) -> None:
    # Behind a trusted proxy (127.0.0.1 here), X-Forwarded-For names the client.
    me, other = {"X-Forwarded-For": "198.51.100.20"}, {"X-Forwarded-For": "198.51.100.21"}
    async with client() as http:
        url = f"{secured.url}/channels/news/stream"
        async with open_stream(http, url, me), open_stream(http, url, me):
            plain = await http.get(url, headers={**me, "Accept": "application/json"})
            assert plain.status_code == 429
            assert plain.json()["error"] == "too_many_streams"
            assert plain.headers["retry-after"]
            # EventSource stops for good on a non-200: it gets a retry: and a close instead.
            async with open_stream(http, url, me, first_bytes=False) as refused:
                await refused.wait_closed()
            assert refused.response.status_code == 200
            assert b"retry: " in refused.raw
            assert refused.events == []
            assert "ended (refused: too many streams from this address); 198.51.100.20" in secured.log()
            # Another client is not affected.
            async with open_stream(http, url, other) as third:
                assert third.response.status_code == 200

        # Both ended: the address may stream again (the count follows the hub's detach).
        async def admitted() -> bool:
            r = await http.get(url, headers={**me, "Accept": "application/json"}, timeout=0.5)
            return r.status_code != 429

        deadline = time.monotonic() + 10
        while True:
            try:
                if await admitted():
                    break
            except httpx.ReadTimeout:
                break  # a 200 stream that did not end: admitted
            assert time.monotonic() < deadline, "the address's slots were never freed"
            await asyncio.sleep(0.05)


async def test_query_string_tokens_never_reach_the_log(secured: HubProcess) -> None:
    token = mint(SECRET, subscribe=["user-log"], ttl=60)
    async with client() as http:
        url = f"{secured.url}/channels/user-log/stream?access_token={token}"
        async with open_stream(http, url, {"X-Forwarded-For": "192.0.2.12"}):
            pass
        # A refused one is logged too.
        await http.get(f"{secured.url}/channels/user-log/stream?access_token=bad.{token}")
    wait_until(lambda: secured.log().count("access_token=REDACTED") >= 2, 5, "the access log lines")
    # The refused one has its stream line too, saying why.
    wait_until(lambda: "stream of user-log ended (refused: 401 unauthorized)" in secured.log(), 5, "its line")
    assert token not in secured.log()
    assert token.split(".")[2] not in secured.log()


# -- abuse -----------------------------------------------------------------------------------


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 400))
    if kind == 1:  # a request line of junk
        return b"".join(rng.choice([b"GET", b"POST", b"\x00", b" ", b"/", b"%", b"\r\n"]) for _ in range(30))
    if kind == 2:  # headers that break the rules
        return b"GET /channels/x/stream HTTP/1.1\r\nHost: x\r\n" + rng.randbytes(50) + b"\r\n\r\n"
    return b"POST /channels/x/events HTTP/1.1\r\nContent-Length: -5\r\n\r\n" + rng.randbytes(20)


def _send_garbage(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return b""
    return answer


async def test_garbage_and_slowloris_leave_a_subscriber_served_within_100ms() -> None:
    rng = random.Random(20261206)
    with running_hub({"HUB_HEADER_TIMEOUT": "30"}) as hub:
        # Slowloris: many connections, each with part of a head, kept open.
        loris = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", hub.port))
            sock.sendall(b"GET /channels/calm/stream HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            loris.append(sock)
        try:
            answers = await asyncio.gather(
                *(asyncio.to_thread(_send_garbage, hub.port, _garbage(rng)) for _ in range(1000))
            )
            for answer in answers:
                # Every answer is a 4xx, or the connection was just closed; never a 5xx.
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
            async with client() as http:
                async with open_stream(http, f"{hub.url}/channels/calm/stream") as stream:
                    delays = []
                    for n in range(20):
                        sent = time.perf_counter()
                        r = await http.post(f"{hub.url}/channels/calm/events", json={"data": n})
                        assert r.status_code == 202
                        await stream.wait_for(n + 1)
                        delays.append(time.perf_counter() - sent)
                assert [json.loads(e.data) for e in stream.events] == list(range(20))
                assert max(delays) < 0.1, delays
                assert (await http.get(hub.url + "/healthz")).status_code == 200
        finally:
            for sock in loris:
                sock.close()
        assert "Traceback" not in hub.log()
