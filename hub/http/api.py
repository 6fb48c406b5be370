"""The FastAPI routes: channel listing, metrics, health.

The two hot paths are not here: streams (:mod:`hub.http.stream`) and
publishes (:mod:`hub.http.publish`) are raw ASGI in front of FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from hub.core.broker import BrokerUnavailable, KeepsStats
from hub.core.hub import Hub
from hub.http.errors import HeadResponse, json_error
from hub.http.metrics import make_registry, render
from hub.http.raw import AppState

Endpoint = Callable[[], Awaitable[Response]]


def as_json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type="application/json")


def make_router(state: AppState) -> APIRouter:
    router = APIRouter()

    def get(path: str) -> Callable[[Endpoint], Endpoint]:
        """A ``GET`` route that answers ``HEAD`` too (load balancers probe with
        it): the same status and headers, no body. The ``HEAD`` twin stays out
        of the OpenAPI schema, where it would repeat the ``GET`` operation."""

        def register(endpoint: Endpoint) -> Endpoint:
            router.add_api_route(path, endpoint, methods=["GET"], response_model=None)

            async def head() -> Response:
                return HeadResponse(await endpoint())

            router.add_api_route(
                path,
                head,
                methods=["HEAD"],
                response_model=None,
                include_in_schema=False,
                name=f"{endpoint.__name__}_head",
            )
            return endpoint

        return register

    def hub_of() -> Hub:
        if state.hub is None:
            raise BrokerUnavailable("the hub is not running")
        return state.hub

    @get("/channels")
    async def channels() -> Response:
        """Channels with subscribers or history on this node."""
        hub = hub_of()
        counts = hub.channel_counts()
        stats = hub.broker.stats() if isinstance(hub.broker, KeepsStats) else {}
        out = []
        for name in sorted(counts.keys() | stats.keys()):
            st = stats.get(name)
            out.append(
                {
                    "channel": name,
                    "subscribers": counts.get(name, 0),
                    "last_id": st.last_id if st else None,
                    "buffered": st.buffered if st else 0,
                }
            )
        return as_json({"channels": out})

    registry = make_registry(state)

    @get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @get("/healthz")
    async def healthz() -> Response:
        """200 while the process is alive."""
        return as_json({"status": "ok"})

    @get("/readyz")
    async def readyz() -> Response:
        """200 only while the broker is usable and the node is not draining."""
        hub = state.hub
        if hub is None or state.draining:
            return json_error(503, "unavailable", "draining" if state.draining else "starting")
        if not hub.broker.ready:
            return json_error(503, "unavailable", f"{hub.broker.name} broker is not connected")
        return as_json({"status": "ready", "broker": hub.broker.name, "streams": len(hub.subscribers)})

    return router
