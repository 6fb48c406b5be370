"""``/ui``: the live dashboard, and ``/_hub/stats``, the stream it reads.

The page is three static files shipped in the package (``hub/http/ui/``):
plain HTML, CSS and JavaScript, no build step and nothing fetched from
elsewhere, so it works offline. It reads the node's figures from
``/_hub/stats`` (one SSE event a second, :class:`hub.http.monitor.Monitor`),
tails channels with ``EventSource`` and publishes with ``fetch``, through
the hub's own public endpoints. ``HUB_UI=false`` leaves all of it out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import orjson
from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from hub import sse
from hub.http.errors import json_error
from hub.http.monitor import Monitor

# The files of the page, by their name under /ui/, with their media type.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
# The page reaches only the hub itself, and loads nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def load() -> dict[str, bytes]:
    folder = resources.files("hub.http").joinpath("ui")
    return {name: folder.joinpath(name).read_bytes() for name in FILES}


def make_dashboard_router(monitor: Monitor) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    files = load()

    def page(name: str) -> Response:
        return Response(
            files[name],
            media_type=FILES[name],
            headers={"cache-control": "no-cache", "content-security-policy": CSP},
        )

    @router.get("/ui")
    async def index() -> Response:
        return page("index.html")

    @router.get("/ui/{name}")
    async def asset(name: str) -> Response:
        if name not in FILES:
            return json_error(404, "not_found", f"no file {name[:100]!r} in the dashboard")
        return page(name)

    @router.get("/_hub/stats")
    async def stats() -> Response:
        """The node's figures as an SSE stream, one event a second."""

        async def events() -> AsyncIterator[bytes]:
            yield sse.encode_retry(1000) + sse.encode_comment("ok")
            async for figures in monitor.updates():
                yield sse.encode_event(orjson.dumps(figures).decode())

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return router
