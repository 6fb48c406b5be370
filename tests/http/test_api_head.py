"""``HEAD`` on the FastAPI routes answers like ``GET``, without a body (load balancers probe with it)."""

from __future__ import annotations

import pytest

from hub.http.app import HubApp, create_app
from hub.settings import Settings
from tests.http.conftest import http

pytestmark = pytest.mark.anyio

ROUTES = ["/healthz", "/readyz", "/channels", "/metrics"]


@pytest.mark.parametrize("path", ROUTES)
async def test_head_answers_like_get_without_a_body(app: HubApp, path: str) -> None:
    async with http(app) as client:
        await client.post("/channels/c/events", json={"data": 1})  # something for /channels to list
        get = await client.get(path)
        head = await client.head(path)
    assert get.status_code == 200
    assert head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    # the length of the body a GET gets, as RFC 9110 allows
    assert get.headers["content-length"] == str(len(get.content))
    if path == "/metrics":  # the process's figures (CPU time, memory, GC) move between two requests
        assert abs(int(head.headers["content-length"]) - len(get.content)) < 200
    else:
        assert head.headers["content-length"] == get.headers["content-length"]


async def test_head_on_a_draining_node_is_503_without_a_body(app: HubApp) -> None:
    app.drain()
    async with http(app) as client:
        get = await client.get("/readyz")
        head = await client.head("/readyz")
    assert get.status_code == head.status_code == 503
    assert get.json()["error"] == "unavailable"
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_head_on_an_error_answered_by_a_handler_has_no_body() -> None:
    stopped = create_app(Settings())  # never started: /channels has no hub and raises
    async with http(stopped) as client:
        get = await client.get("/channels")
        head = await client.head("/channels")
        missing = await client.head("/nowhere")
    assert get.status_code == head.status_code == 503
    assert get.json()["error"] == "unavailable"
    assert head.content == b""
    assert head.headers["retry-after"] == "1"
    assert (missing.status_code, missing.content) == (404, b"")
