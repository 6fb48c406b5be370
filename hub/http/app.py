"""The ASGI application and the composition root: the one place that picks a
broker (by URL), builds the hub, and puts the raw routes (streams, publishes)
in front of FastAPI (everything else), all tied to the ASGI lifespan.

    app = create_app(Settings())   # uvicorn runs it (hub.server)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hub.brokers.memory import MemoryBroker
from hub.core.broker import Broker
from hub.core.hub import Hub
from hub.housekeeping import trim_after_closes
from hub.http import errors
from hub.http.api import make_router
from hub.http.publish import PublishEndpoint
from hub.http.raw import AppState, cors_headers, origin_of
from hub.http.routes import Route, Router, channel_events, channel_stream, multi_stream
from hub.http.stream import StreamEndpoint
from hub.inputs import Limits
from hub.settings import Settings

log = logging.getLogger(__name__)


def broker_for(settings: Settings) -> Broker:
    """No URL: the in-memory broker; ``redis://``: the Redis broker (imported only then)."""
    if settings.redis_url is None:
        return MemoryBroker(
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            history_max_bytes=settings.history_max_bytes,
        )
    from hub.brokers.redis import RedisBroker

    return RedisBroker(
        settings.redis_url,
        prefix=settings.redis_prefix,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        pool_size=settings.redis_pool_size,
        command_timeout=settings.redis_timeout,
        # What comes from Redis is checked exactly as an HTTP publish is.
        limits=Limits(settings.max_event_bytes, settings.max_body_bytes, settings.max_channels_per_stream),
    )


class HubApp(Router):
    """The ASGI callable uvicorn runs: the raw routes in front of FastAPI (being the
    router itself saves a coroutine call per request on the hot paths)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = AppState()
        self._trimmer: asyncio.Task[None] | None = None
        self.streams = StreamEndpoint(settings, self.state)
        self.publish = PublishEndpoint(settings, self.state)
        self.api = self._build_api()
        origins = settings.cors_origin_list
        stream_methods = {"GET", "HEAD"}
        super().__init__(
            [
                # Publishes first: a stream is one request for a long time, publishes keep coming.
                Route("publish", channel_events, {"POST"}, self.publish, "events are published with POST"),
                Route("stream", channel_stream, stream_methods, self.streams, "streams are read with GET"),
                Route("stream", multi_stream, stream_methods, self.streams, "streams are read with GET"),
            ],
            fallback=self.api,
            cors=lambda scope: cors_headers(origins, origin_of(scope)),
            requests=self.state.requests,
        )

    @property
    def hub(self) -> Hub | None:
        return self.state.hub

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
        self.state.hub = hub

        # Memory goes back to the OS after a wave of closed streams, or of forgotten channels.
        def released() -> int:
            forgotten = broker.forgotten if isinstance(broker, MemoryBroker) else 0
            return hub.stats.streams_closed + forgotten

        self._trimmer = asyncio.create_task(trim_after_closes(released))
        log.info("%s broker connected", broker.name)

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
        self.state.hub = None
        log.info("hub stopped")


def create_app(settings: Settings | None = None) -> HubApp:
    return HubApp(settings or Settings())
