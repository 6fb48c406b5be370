"""Every bad input gets its 4xx and a JSON body, and the hub serves on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import HubProcess

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


def deep(levels: int) -> bytes:
    return b'{"data": ' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "error"),
    [
        ("POST", "/channels/c/events", JSON, b"{nope", 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, b'{"event": "x"}', 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "id": "5-0"}', 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, b"[]", 400, "bad_request"),
        (
            "POST",
            "/channels/c/events",
            JSON,
            b"[" + b'{"data":1},' * 1000 + b'{"data":1}]',
            400,
            "bad_request",
        ),
        ("POST", "/channels/c/events", JSON, b'[{"data":1}, {"nodata":1}]', 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "event": "hub.gap"}', 400, "bad_event_type"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "event": "a b"}', 400, "bad_event_type"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "event": ""}', 400, "bad_event_type"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "retry": -1}', 400, "bad_retry"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "retry": 86400001}', 400, "bad_retry"),
        ("POST", "/channels/c/events", JSON, b'{"data": 1, "retry": true}', 400, "bad_retry"),
        ("POST", "/channels/c/events", JSON, b'{"data": "' + b"x" * 70000 + b'"}', 413, "event_too_large"),
        # orjson reads 255-1,023 levels but writes at most 254 (once a 500 and a traceback)
        ("POST", "/channels/c/events", JSON, deep(65), 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, deep(255), 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, deep(1023), 400, "bad_request"),
        ("POST", "/channels/c/events", JSON, deep(5000), 400, "bad_request"),
        ("POST", "/channels/c/events", {"Content-Type": "text/plain"}, b"", 400, "bad_request"),
        ("POST", "/channels/c/events", {"Content-Type": "text/plain"}, b"\xff\xfe", 400, "bad_request"),
        (
            "POST",
            "/channels/c/events?event=hub.x",
            {"Content-Type": "text/plain"},
            b"x",
            400,
            "bad_event_type",
        ),
        ("POST", "/channels/c/events", {"Content-Type": "text/html"}, b"<b>", 415, "unsupported_media_type"),
        ("POST", "/channels/c/events", {}, b'{"data": 1}', 415, "unsupported_media_type"),
        ("POST", "/channels/bad%20name/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        ("POST", "/channels/" + "x" * 129 + "/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        # "/" in a name: a bad channel, not an unknown path
        ("POST", "/channels/a%2Fb/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        ("POST", "/channels/a%2F/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        # dot segments: browsers and curl drop them from paths, so nobody could subscribe
        ("POST", "/channels/%2E%2E/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        ("POST", "/channels/%2e/events", JSON, b'{"data": 1}', 400, "bad_channel"),
        ("GET", "/channels/%2E%2E/stream", {}, b"", 400, "bad_channel"),
        ("GET", "/channels/a%2Fb/stream", {}, b"", 400, "bad_channel"),
        ("GET", "/stream?channel=ok&channel=.", {}, b"", 400, "bad_channel"),
        ("GET", "/channels/bad%20name/stream", {}, b"", 400, "bad_channel"),
        ("GET", "/channels/c/stream", {"Last-Event-ID": "1" * 2049}, b"", 400, "bad_request"),
        ("GET", "/stream", {}, b"", 400, "bad_request"),
        ("GET", "/stream?" + "&".join(f"channel=c{i}" for i in range(33)), {}, b"", 400, "bad_request"),
        ("GET", "/stream?channel=ok&channel=n%C3%B6", {}, b"", 400, "bad_channel"),
        ("POST", "/channels/c/stream", {}, b"", 405, "method_not_allowed"),
        ("GET", "/channels/c/events", {}, b"", 405, "method_not_allowed"),
        ("OPTIONS", "/channels/c/events", {}, b"", 405, "method_not_allowed"),  # not a preflight
        ("OPTIONS", "/channels/c/stream", {}, b"", 405, "method_not_allowed"),
        ("GET", "/nowhere", {}, b"", 404, "not_found"),
        ("DELETE", "/channels", {}, b"", 405, "method_not_allowed"),
    ],
)
def test_bad_input_gets_a_json_error(
    hub_server: HubProcess,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    error: str,
) -> None:
    logged = len(hub_server.log())
    response = httpx.request(method, hub_server.url + path, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["error"] == error
    assert isinstance(payload["detail"], str)
    assert payload["detail"]
    # ... and the hub serves on, with nothing to report.
    assert httpx.get(hub_server.url + "/healthz").status_code == 200
    assert "Traceback" not in hub_server.log()[logged:]


def test_body_over_the_limit_is_413_even_when_streamed_without_length(hub_server: HubProcess) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    response = httpx.post(
        hub_server.url + "/channels/c/events", content=body(), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
