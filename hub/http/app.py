"""The ASGI application: streams in front, FastAPI for the rest, one hub.

``create_app(settings)`` builds the broker (by URL scheme), the hub and both
halves, and ties their life to the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hub.brokers import broker_for
from hub.core.hub import Hub
from hub.housekeeping import trim_after_closes
from hub.http import errors
from hub.http.api import make_router
from hub.http.publish import PublishEndpoint, publish_channel_of
from hub.http.raw import StreamState
from hub.http.stream import StreamEndpoint, stream_channels_of
from hub.http.types import Receive, Scope, Send
from hub.settings import Settings

log = logging.getLogger(__name__)


class HubApp:
    """The ASGI callable uvicorn runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = StreamState()
        self.hub: Hub | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self.streams = StreamEndpoint(settings, self.state)
        self.publish = PublishEndpoint(settings, self.state)
        self.api = self._build_api()

    def _build_api(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        api = FastAPI(title="ssehub", version="0.1.0", lifespan=lifespan)
        errors.install(api)
        if self.settings.cors_origin_list:
            api.add_middleware(
                CORSMiddleware,
                allow_origins=self.settings.cors_origin_list,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                max_age=600,
            )
        api.include_router(make_router(self.state))
        return api

    async def start(self) -> None:
        s = self.settings
        broker = broker_for(s)
        hub = Hub(
            broker,
            heartbeat_seconds=s.heartbeat_seconds,
            max_pending_bytes=s.max_pending_bytes,
            stall_seconds=s.stall_seconds,
        )
        await hub.start()
        self.hub = self.state.hub = hub
        self._trimmer = asyncio.create_task(trim_after_closes(lambda: hub.stats.streams_closed))
        log.info("hub started with the %s broker", broker.name)

    def drain(self) -> int:
        """Refuse new streams and end the open ones, each told to come back
        (to another node) after a jittered ``retry:``. Returns how many."""
        self.state.draining = True
        if self.hub is None:
            return 0
        count = self.hub.close_all(self.streams.come_back)
        log.info("draining: ended %d streams", count)
        return count

    async def stop(self) -> None:
        if self.hub is None:
            return
        self.drain()
        if self._trimmer is not None:
            self._trimmer.cancel()
            await asyncio.gather(self._trimmer, return_exceptions=True)
        await self.hub.stop()
        self.hub = self.state.hub = None
        log.info("hub stopped")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Streams and publishes, the two hot paths, bypass FastAPI; CORS preflights
        # go to its CORS middleware like everything else.
        if scope["type"] == "http" and not _is_preflight(scope):
            path = scope["path"]
            route = stream_channels_of(path)
            if route is not None:
                await self.streams(scope, receive, send, *route)
                return
            channel = publish_channel_of(path)
            if channel is not None:
                await self.publish(scope, receive, send, channel)
                return
        await self.api(scope, receive, send)


def _is_preflight(scope: Scope) -> bool:
    return scope["method"] == "OPTIONS" and any(
        key.lower() == b"access-control-request-method" for key, _ in scope["headers"]
    )


def create_app(settings: Settings | None = None) -> HubApp:
    return HubApp(settings or Settings())
