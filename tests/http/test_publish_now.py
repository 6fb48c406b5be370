"""Publishes answered in the connection itself (HubHttpProtocol + HubApp.answer_now):
the same answers as through ASGI, in order with the requests around them, and
pipelined publishes answered in the read that brought them, in one write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from hub.http.app import HubApp, create_app
from hub.http.protocol import HubHttpProtocol, protocol_class
from hub.settings import Settings
from tests.http.test_protocol import FakeTransport, answers, until

pytestmark = [pytest.mark.anyio]


def post(channel: str, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    head = b"POST /channels/%s/events HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n" % (
        channel.encode(),
        version,
    )
    return head + b"".join(h + b"\r\n" for h in headers) + b"Content-Length: %d\r\n\r\n" % len(body) + body


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class CountingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        super().write(data)


class Node:
    def __init__(self, app: HubApp, now: bool) -> None:
        self.app = app
        self.config = Config(app=app, log_level="warning", lifespan="off")
        self.config.load()
        self.state = ServerState()
        self.cls = protocol_class(65536, 10.0, 64)
        self.cls.now = app if now else None

    def connect(self) -> tuple[HubHttpProtocol, CountingTransport]:
        proto = self.cls(self.config, self.state, {}, asyncio.get_running_loop())
        transport = CountingTransport()
        transport.protocol = proto
        proto.connection_made(transport)
        return proto, transport


@pytest.fixture(params=["now", "later", "asgi"])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    """The three ways a publish is answered: in the connection at once (a broker that never
    waits), in the connection by one task (a broker that waits: Redis; played here by the
    memory broker's async publish), and through ASGI."""
    app = create_app(Settings(max_body_bytes=1000))
    await app.start()
    if request.param == "later":
        app._now = False
    try:
        yield Node(app, now=request.param != "asgi")
    finally:
        await app.stop()


def bodies(written: bytes) -> list[Any]:
    out = []
    for part in written.split(b"HTTP/1.1 ")[1:]:
        out.append(orjson.loads(part.split(b"\r\n\r\n", 1)[1]))
    return out


async def test_pipelined_publishes_are_answered_in_order_around_other_requests(node: Node) -> None:
    proto, transport = node.connect()
    proto.data_received(post("p", b'{"data": 1}') * 3 + HEALTHZ + post("p", b'{"data": 2}'))
    if node.cls.now is not None and node.app._now:
        # The three before the ASGI request: answered in this read, in one write.
        assert answers(bytes(transport.written)) == [202, 202, 202]
        assert transport.writes == 1
    await until(lambda: len(answers(bytes(transport.written))) == 5)
    assert answers(bytes(transport.written)) == [202, 202, 202, 200, 202]
    ids = [b["id"] for b in bodies(bytes(transport.written)) if "id" in b]
    assert len(ids) == 4
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_answers_are_the_same_either_way(node: Node) -> None:
    cases = [
        (post("ok", b'[{"data": 1}, {"data": 2}]'), 202, None),
        (post("a%2Fb", b'{"data": 1}'), 400, "bad_channel"),
        (post("c", b"{nope"), 400, "bad_request"),
        (post("c", b'{"data": "' + b"x" * 2000 + b'"}'), 413, "body_too_large"),
        (post("c", b'{"data": 1}', b"Origin: http://evil.example"), 403, "forbidden"),
        (post("c", b'{"data": 1}', b"Idempotency-Key: " + b"k" * 300), 400, "bad_request"),
    ]
    for request, status, error in cases:
        proto, transport = node.connect()
        proto.data_received(request)
        await until(lambda transport=transport: b"\r\n\r\n" in transport.written)  # type: ignore[misc]
        written = bytes(transport.written)
        assert answers(written) == [status], written
        body = bodies(written)[0]
        if error is None:
            assert len(body["ids"]) == 2
        else:
            assert body["error"] == error, body
        assert b"content-type: application/json" in written
        assert not transport.closing  # keep-alive either way


async def test_a_request_the_parser_refuses_gets_a_json_400_and_the_connection_closes(node: Node) -> None:
    proto, transport = node.connect()
    proto.data_received(post("c", b'{"data": 1}', b"Idempotency-Key: \x01"))
    written = bytes(transport.written)
    assert answers(written) == [400]
    assert bodies(written)[0]["error"] == "bad_request"
    assert transport.closing


async def test_a_publish_in_pieces_and_the_end_of_keep_alive(node: Node) -> None:
    proto, transport = node.connect()
    request = post("pieces", b'{"data": "in pieces"}')
    for i in range(0, len(request), 7):
        proto.data_received(request[i : i + 7])
    await until(lambda: answers(bytes(transport.written)) == [202])
    assert not transport.closing
    proto, transport = node.connect()
    proto.data_received(post("old", b'{"data": 1}', version=b"1.0"))
    await until(lambda: transport.closing)
    assert answers(bytes(transport.written)) == [202]
    assert b"connection: close" in bytes(transport.written).lower()


async def test_credentials_are_checked_on_the_connection_path_too() -> None:
    app = create_app(Settings(publish_tokens="tok-0123456789"))
    await app.start()
    try:
        node = Node(app, now=True)
        proto, transport = node.connect()
        proto.data_received(
            post("c", b'{"data": 1}') + post("c", b'{"data": 1}', b"Authorization: Bearer tok-0123456789")
        )
        written = bytes(transport.written)
        assert answers(written) == [401, 202]
        assert b'www-authenticate: Bearer realm="ssehub"' in written
        assert app.requests["publish"] == 2
    finally:
        await app.stop()


_pieces = st.sampled_from(
    [
        b"POST /channels/c/events HTTP/1.1\r\n",
        b"POST /channels/a%2Fb/events HTTP/1.1\r\n",
        b"POST /channels/c/events?event=x&retry=-1 HTTP/1.0\r\n",
        b"GET /healthz HTTP/1.1\r\n",
        b"Host: x\r\n",
        b"Content-Type: application/json\r\n",
        b"Content-Type: text/plain\r\n",
        b"Content-Length: 11\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"Origin: http://evil.example\r\n",
        b"\r\n",
        b'{"data": 1}',
        b"hello",
        b"5\r\nhello\r\n0\r\n\r\n",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.one_of(_pieces, st.binary(max_size=12)), max_size=14))
def test_any_bytes_on_the_connection_path_never_raise_nor_answer_5xx(chunks: list[bytes]) -> None:
    async def run() -> None:
        app = create_app(Settings(max_body_bytes=1000))
        await app.start()
        try:
            node = Node(app, now=True)
            proto, transport = node.connect()
            for chunk in chunks:
                if transport.closing:
                    break
                proto.data_received(chunk)
            await asyncio.sleep(0)  # let any ASGI request that started answer
            written = bytes(transport.written)
            for status in answers(written):
                assert status < 500, written
            transport.close()
        finally:
            await app.stop()

    asyncio.run(run())


async def test_a_publish_answered_later_keeps_the_connections_order_and_survives_its_client() -> None:
    app = create_app(Settings())
    await app.start()
    app._now = False  # as with a broker that must wait (Redis): one task per publish
    try:
        node = Node(app, now=True)
        proto, transport = node.connect()
        # A publish, then an ASGI request and another publish pipelined behind it.
        proto.data_received(post("later", b'{"data": 1}') + HEALTHZ + post("later", b'{"data": 2}'))
        await until(lambda: len(answers(bytes(transport.written))) == 3)
        assert answers(bytes(transport.written)) == [202, 200, 202]
        ids = [b["id"] for b in bodies(bytes(transport.written)) if "id" in b]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        # A client that goes while its publish is pending: nothing is written after the close.
        proto, transport = node.connect()
        proto.data_received(post("later", b'{"data": 3}'))
        transport.close()
        await until(lambda: proto.cycle is not None and proto.cycle.response_complete)
        assert transport.written == b""
    finally:
        await app.stop()
