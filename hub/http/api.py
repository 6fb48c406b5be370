"""The FastAPI routes: publish, channel listing, health.

Streams are not here: they are served by :mod:`hub.http.stream`, in front of
FastAPI (see there for why).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from hub.brokers.base import BrokerUnavailable
from hub.http.errors import json_error
from hub.http.metrics import make_registry, render
from hub.http.stream import StreamState
from hub.inputs import InputError, Limits, check_channel, parse_publish
from hub.settings import Settings


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "body_too_large", f"the body is {declared} bytes, the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise InputError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(piece)
    return b"".join(chunks)


def as_json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type="application/json")


def make_router(settings: Settings, state: StreamState) -> APIRouter:
    router = APIRouter()
    limits = Limits(settings.max_event_bytes, settings.max_body_bytes, settings.max_channels_per_stream)

    def hub_of() -> Any:
        if state.hub is None:
            raise BrokerUnavailable("the hub is not running")
        return state.hub

    @router.post("/channels/{channel}/events", status_code=202, response_model=None)
    async def publish(channel: str, request: Request) -> Response:
        """Publish one event (JSON object), a batch (JSON array) or a text event."""
        check_channel(channel)
        hub = hub_of()
        body = await read_body(request, settings.max_body_bytes)
        payloads, batch = parse_publish(
            request.headers.get("content-type"), body, request.query_params, limits
        )
        if not hub.broker.ready:
            raise BrokerUnavailable(f"{hub.broker.name} broker is not connected")
        ids = await hub.broker.publish(channel, payloads)
        return as_json({"channel": channel, "ids": ids} if batch else {"channel": channel, "id": ids[0]}, 202)

    @router.get("/channels", response_model=None)
    async def channels() -> Response:
        """Channels with subscribers or history on this node."""
        hub = hub_of()
        counts = hub.channel_counts()
        stats = hub.broker.stats()
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

    registry = make_registry(lambda: state.hub)

    @router.get("/metrics", response_model=None)
    async def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/healthz", response_model=None)
    async def healthz() -> Response:
        """200 while the process is alive."""
        return as_json({"status": "ok"})

    @router.get("/readyz", response_model=None)
    async def readyz() -> Response:
        """200 only while the broker is usable and the node is not draining."""
        hub = state.hub
        if hub is None or state.draining:
            return json_error(503, "unavailable", "draining" if state.draining else "starting")
        if not hub.broker.ready:
            return json_error(503, "unavailable", f"{hub.broker.name} broker is not connected")
        return as_json({"status": "ready", "broker": hub.broker.name, "streams": len(hub.subscribers)})

    return router
