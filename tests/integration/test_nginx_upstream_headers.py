"""What the shipped nginx.conf sends to a node, read off the wire.

A recording upstream stands in for the hub: it keeps each request head nginx
forwards and answers like the hub would (a stream head, or a 202 to a
publish). The static checks only see that the directives are there; this
sees what they do.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.nginx import Nginx
from tests.support.procs import wait_until

pytestmark = pytest.mark.integration


class RecordingUpstream:
    """Accepts connections, keeps every request head, answers stream or publish."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[dict[str, str]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="recording-upstream", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                rest += conn.recv(65536)
            with self._lock:
                self.lines.append(request_line)
                self.heads.append(headers)
            if request_line.startswith("POST "):
                body = b'{"channel":"c","id":"1-0"}'
                conn.sendall(
                    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            else:
                body = b"retry: 3000\n: ok\n\n"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                    b"Cache-Control: no-cache\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Nginx, RecordingUpstream]]:
    upstream = RecordingUpstream()
    nginx = Nginx([f"127.0.0.1:{upstream.port}"])
    nginx.start()
    try:
        yield nginx, upstream
    finally:
        nginx.stop()
        upstream.close()


def _last_head(upstream: RecordingUpstream, count: int) -> tuple[str, dict[str, str]]:
    wait_until(lambda: len(upstream.heads) >= count, 5, "nginx forwarded the request")
    return upstream.lines[count - 1], upstream.heads[count - 1]


def test_a_stream_request_reaches_the_node_with_the_sse_headers(
    proxied: tuple[Nginx, RecordingUpstream],
) -> None:
    nginx, upstream = proxied
    before = len(upstream.heads)
    response = httpx.get(
        nginx.url + "/channels/c/stream",
        headers={"Accept": "text/event-stream", "X-Request-ID": "req-42", "Last-Event-ID": "5-0"},
    )
    assert response.status_code == 200
    line, head = _last_head(upstream, before + 1)
    assert line == "GET /channels/c/stream HTTP/1.1"  # HTTP/1.1 upstream: chunked, kept alive
    assert "connection" not in head  # Connection '': no "close" on a long-lived stream
    assert head["x-forwarded-for"] == "127.0.0.1"
    assert head["x-forwarded-proto"] == "http"
    assert head["x-request-id"] == "req-42"  # the client's id is passed on
    assert head["last-event-id"] == "5-0"  # resuming works through the proxy


def test_a_request_without_an_id_gets_one_from_nginx(proxied: tuple[Nginx, RecordingUpstream]) -> None:
    nginx, upstream = proxied
    before = len(upstream.heads)
    httpx.get(nginx.url + "/channels/c/stream")
    httpx.get(nginx.url + "/channels/c/stream")
    _, first = _last_head(upstream, before + 1)
    _, second = _last_head(upstream, before + 2)
    assert len(first["x-request-id"]) == 32  # nginx's $request_id: 32 hex digits
    assert int(first["x-request-id"], 16) >= 0
    assert first["x-request-id"] != second["x-request-id"]


def test_a_publish_reaches_the_node_with_its_body_and_forwarded_headers(
    proxied: tuple[Nginx, RecordingUpstream],
) -> None:
    nginx, upstream = proxied
    before = len(upstream.heads)
    response = httpx.post(
        nginx.url + "/channels/c/events",
        headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.7"},
        content=b'{"data": 1}',
    )
    assert response.status_code == 202
    line, head = _last_head(upstream, before + 1)
    assert line == "POST /channels/c/events HTTP/1.1"
    # nginx appends the address it saw to what the client claimed
    assert head["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert head["content-length"] == "11"
    assert len(head["x-request-id"]) == 32
