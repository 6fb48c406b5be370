"""The FastAPI routes: channel listing, metrics, health.

The two hot paths are not here: streams (:mod:`hub.http.stream`) and
publishes (:mod:`hub.http.publish`) are raw ASGI in front of FastAPI.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import QueryParams

from hub.core.broker import BrokerUnavailable, KeepsStats
from hub.core.hub import Hub
from hub.http.errors import HeadResponse, json_error
from hub.http.metrics import make_registry, render
from hub.http.raw import AppState
from hub.inputs import NAME_RE, bad

Endpoint = Callable[[Request], Awaitable[Response]]

# GET /channels pages: ?limit= channels each (1..MAX), from after ?cursor=.
CHANNELS_LIMIT = 100
CHANNELS_LIMIT_MAX = 1000
_LIMIT_RE = re.compile(r"[0-9]{1,4}")
# A prefix is a channel name's start: the same characters, empty included.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{0,128}")


def as_json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type="application/json")


def _one(query: QueryParams, name: str) -> str | None:
    """The query parameter ``name``, if given; given twice is a bad request."""
    values = query.getlist(name)
    if len(values) > 1:
        raise bad(f"query.{name}: given {len(values)} times, at most once")
    return values[0] if values else None


def channel_page_query(query: QueryParams) -> tuple[int, str | None, str]:
    """``limit``, ``cursor`` and ``prefix`` of a ``GET /channels``, checked."""
    limit = CHANNELS_LIMIT
    raw = _one(query, "limit")
    if raw is not None:
        if not _LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= CHANNELS_LIMIT_MAX:
            raise bad(f"query.limit: an integer from 1 to {CHANNELS_LIMIT_MAX}, got {raw[:200]!r}")
        limit = int(raw)
    # The cursor is the last channel name of the previous page (clients take it as opaque).
    cursor = _one(query, "cursor")
    if cursor is not None and not NAME_RE.fullmatch(cursor):
        raise bad(f"query.cursor: not a cursor this hub hands out: {cursor[:200]!r}")
    prefix = _one(query, "prefix") or ""
    if not _PREFIX_RE.fullmatch(prefix):
        raise bad(f"query.prefix: at most 128 characters of A-Z a-z 0-9 _ . : -, got {prefix[:200]!r}")
    return limit, cursor, prefix


def channel_page(
    names: Iterable[str], limit: int, cursor: str | None, prefix: str
) -> tuple[list[str], str | None]:
    """The first ``limit`` of ``names`` (no repeats) after ``cursor`` that start
    with ``prefix``, in order, and the cursor of the next page (None on the last).

    O(N log limit) and O(limit) memory: a million channels are scanned once,
    never copied nor sorted whole.
    """
    if cursor is not None:
        names = filter(cursor.__lt__, names)
    if prefix:
        names = (name for name in names if name.startswith(prefix))
    page = heapq.nsmallest(limit + 1, names)
    if len(page) > limit:
        return page[:limit], page[limit - 1]
    return page, None


def make_router(state: AppState) -> APIRouter:
    router = APIRouter()

    def get(path: str) -> Callable[[Endpoint], Endpoint]:
        """A ``GET`` route that answers ``HEAD`` too (load balancers probe with
        it): the same status and headers, no body. The ``HEAD`` twin stays out
        of the OpenAPI schema, where it would repeat the ``GET`` operation."""

        def register(endpoint: Endpoint) -> Endpoint:
            router.add_api_route(path, endpoint, methods=["GET"], response_model=None)

            async def head(request: Request) -> Response:
                return HeadResponse(await endpoint(request))

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
    async def channels(request: Request) -> Response:
        """Channels with subscribers or history on this node, a page at a time in
        name order: ``?limit=`` (1-1000, 100 by default), ``?cursor=`` (the
        ``next`` of the previous page), ``?prefix=``."""
        limit, cursor, prefix = channel_page_query(request.query_params)
        hub = hub_of()
        live = hub.channels
        broker = hub.broker
        kept: Collection[str] = broker.channel_names() if isinstance(broker, KeepsStats) else ()
        # Each name once, without copying either key set or building their union.
        names = itertools.chain(kept, (name for name in live if name not in kept))
        page, next_cursor = channel_page(names, limit, cursor, prefix)
        out = []
        for name in page:
            st = broker.channel_stats(name) if isinstance(broker, KeepsStats) else None
            channel = live.get(name)
            out.append(
                {
                    "channel": name,
                    "subscribers": channel.subscribers if channel is not None else 0,
                    "last_id": st.last_id if st else None,
                    "buffered": st.buffered if st else 0,
                }
            )
        return as_json({"channels": out, "next": next_cursor})

    registry = make_registry(state)

    @get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        return Response(render(registry, state), media_type=CONTENT_TYPE_LATEST)

    @get("/healthz")
    async def healthz(request: Request) -> Response:
        """200 while the process is alive."""
        return as_json({"status": "ok"})

    @get("/readyz")
    async def readyz(request: Request) -> Response:
        """200 only while the broker is usable and the node is not draining."""
        hub = state.hub
        if hub is None or state.draining:
            return json_error(503, "unavailable", "draining" if state.draining else "starting")
        if not hub.broker.ready:
            return json_error(503, "unavailable", f"{hub.broker.name} broker is not connected")
        return as_json({"status": "ready", "broker": hub.broker.name, "streams": len(hub.subscribers)})

    return router
