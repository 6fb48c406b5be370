"""The ASGI application and the composition root: the one place that picks a
broker (by URL), builds the hub, and puts the raw routes (streams, publishes)
in front of FastAPI (everything else), all tied to the ASGI lifespan.

    app = create_app(Settings())   # uvicorn runs it (hub.server)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hub.brokers.memory import MemoryBroker
from hub.core.broker import Broker, PublishesNow
from hub.core.hub import Hub
from hub.housekeeping import trim_after_closes
from hub.http import errors
from hub.http.api import make_router
from hub.http.auth import Auth, Refusal
from hub.http.counters import ChannelGlobs
from hub.http.dashboard import make_dashboard_router
from hub.http.errors import error_body
from hub.http.metrics import make_registry, write_snapshot
from hub.http.monitor import Monitor
from hub.http.publish import Answer, PublishEndpoint
from hub.http.raw import AppState, cors_headers, origin_of
from hub.http.routes import Route, Router, channel_events, channel_stream, multi_stream
from hub.http.stream import StreamEndpoint
from hub.http.streamlog import stream_refused
from hub.http.types import Scope
from hub.inputs import Limits
from hub.settings import Settings, split_list

log = logging.getLogger(__name__)

# What the fallback serves to anyone: the probes. Everything else there is an
# admin endpoint (channel list, metrics, docs, dashboard), behind Auth.admin.
# The dashboard's page and files (/ui, /ui/<file>) hold no data: what they show comes from
# /_hub/stats and the streams, which are checked.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/ui"})
# Request headers a cross-origin page may send (preflights): publishes, streams and polyfills.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "Idempotency-Key",
    "X-Request-ID",
    "Cache-Control",
    "X-Requested-With",
]


def broker_for(settings: Settings) -> Broker:
    """No URL: the in-memory broker; ``redis://``: the Redis broker (imported only then)."""
    if settings.redis_url is None:
        return MemoryBroker(
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            history_max_bytes=settings.history_max_bytes,
            idempotency_seconds=settings.idempotency_seconds,
        )
    from hub.brokers.redis import RedisBroker
    from hub.brokers.redis_url import TlsFiles

    return RedisBroker(
        settings.redis_url,
        prefix=settings.redis_prefix,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        pool_size=settings.redis_pool_size,
        command_timeout=settings.redis_timeout,
        # What comes from Redis is checked exactly as an HTTP publish is.
        limits=Limits(settings.max_event_bytes, settings.max_body_bytes, settings.max_channels_per_stream),
        idempotency_seconds=settings.idempotency_seconds,
        tls=TlsFiles(settings.redis_ca_cert, settings.redis_client_cert, settings.redis_client_key),
    )


class HubApp(Router):
    """The ASGI callable uvicorn runs: the raw routes in front of FastAPI (being the
    router itself saves a coroutine call per request on the hot paths)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = AppState()
        self._trimmer: asyncio.Task[None] | None = None
        self.auth = Auth(settings)
        self.streams = StreamEndpoint(settings, self.state, self.auth)
        self.publish = PublishEndpoint(settings, self.state, self.auth)
        self.state.stats.globs = ChannelGlobs(split_list(settings.metrics_channels))
        # The node's figures each second: the dashboard's stream, the loop's lag.
        self.monitor = Monitor(self.state)
        self.api = self._build_api()
        origins = settings.cors_origin_list
        stream_methods = {"GET", "HEAD"}
        # No private channel: no check on streams at all.
        stream_guard = self._stream_guard if self.auth.private is not None else None
        self._publish_route = Route(
            "publish",
            channel_events,
            {"POST"},
            self.publish,
            "events are published with POST",
            self._publish_guard,
        )
        # While the hub runs, publishes skip ASGI (answer_now); with a broker that publishes
        # without waiting (_now) they need no task either.
        self._takes = False
        self._now = False
        self.body_limit = settings.max_body_bytes
        super().__init__(
            [
                # Publishes first: a stream is one request for a long time, publishes keep coming.
                self._publish_route,
                Route(
                    "stream",
                    channel_stream,
                    stream_methods,
                    self.streams,
                    "streams are read with GET",
                    stream_guard,
                ),
                Route(
                    "stream",
                    multi_stream,
                    stream_methods,
                    self.streams,
                    "streams are read with GET",
                    stream_guard,
                ),
            ],
            fallback=self.api,
            cors=lambda scope: cors_headers(origins, origin_of(scope)),
            requests=self.state.requests,
            fallback_guard=self._admin_guard,
        )

    def takes_now(self, path: str) -> dict[str, str] | None:
        """The path's parameters when a POST to ``path`` is one the connection may answer
        itself with :meth:`answer_now` (a publish, while the hub runs), else None."""
        return channel_events(path) if self._takes else None

    def answer_now(self, scope: Scope, body: bytes | None) -> Answer | Coroutine[Any, Any, Answer]:
        """A publish whose body has arrived, answered with no ASGI messages: admitted
        (counted, credentials checked) exactly as :class:`Router` admits it. The whole
        answer when the broker publishes without waiting (no task at all), else a
        coroutine of it (the connection runs it as the publish's one task)."""
        refusal = self.admit(self._publish_route, scope)  # path_params: set by the connection
        if refusal is not None:
            headers = [(b"content-type", b"application/json"), *refusal.headers, *self.cors(scope)]
            return refusal.status, headers, error_body(refusal.error, refusal.detail)
        if self._now:
            return self.publish.publish_now(scope, body)
        return self.publish.publish_later(scope, body)

    def _publish_guard(self, scope: Scope) -> Refusal | None:
        who = self.auth.publish(scope, scope["path_params"]["channel"])
        if isinstance(who, Refusal):
            return who
        scope["hub.principal"] = who
        return None

    def _stream_guard(self, scope: Scope) -> Refusal | None:
        single = scope["path_params"].get("channel")
        if single is not None:
            channels = [single]
        else:
            query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            channels = [v for k, v in query if k == "channel"]
        expires = self.auth.stream(scope, channels)
        if isinstance(expires, Refusal):
            stream_refused(scope, channels, f"{expires.status} {expires.error}")
            return expires
        if expires is not None:
            scope["hub.expires"] = expires
        return None

    def _admin_guard(self, scope: Scope) -> Refusal | None:
        path = scope["path"]
        if path in PUBLIC_PATHS or (path.startswith("/ui/") and path.count("/") == 2):
            return None
        return self.auth.admin(scope)

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

        docs = self.settings.docs
        api = FastAPI(
            title="ssehub",
            version="0.1.0",
            lifespan=lifespan,
            docs_url="/docs" if docs else None,
            redoc_url="/redoc" if docs else None,
            openapi_url="/openapi.json" if docs else None,
        )
        errors.install(api)
        origins = self.settings.cors_origin_list
        if origins:
            # Answers every preflight, the raw routes' included. Cookies (credentials)
            # only with exact origins: with "*" Starlette would echo any origin.
            api.add_middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "HEAD", "POST"],
                allow_headers=CORS_REQUEST_HEADERS,
                allow_credentials="*" not in origins,
                max_age=600,
            )
        api.include_router(make_router(self.state))
        if self.settings.ui:
            api.include_router(make_dashboard_router(self.monitor))
        return api

    async def start(self) -> None:
        s = self.settings
        self._warn_if_open()
        broker = broker_for(s)
        hub = Hub(
            broker,
            heartbeat_seconds=s.heartbeat_seconds,
            max_pending_bytes=s.max_pending_bytes,
            stall_seconds=s.stall_seconds,
        )
        await hub.start()
        self.state.hub = hub
        self._now = isinstance(broker, PublishesNow)
        self._takes = True

        # Memory goes back to the OS after a wave of closed streams, or of forgotten channels.
        def released() -> int:
            forgotten = broker.forgotten if isinstance(broker, MemoryBroker) else 0
            return hub.stats.streams_closed + forgotten

        self._trimmer = asyncio.create_task(trim_after_closes(released))
        directory = self.state.metrics_dir
        if directory is not None:  # --workers: this worker's series, for the node's scrape
            registry = make_registry(self.state)
            self.monitor.each_tick = lambda: write_snapshot(registry, directory)
        self.monitor.start()
        log.info("%s broker connected", broker.name)

    def _warn_if_open(self) -> None:
        if self.auth.credentials:
            return
        if self.settings.publish_open:
            log.warning(
                "HUB_PUBLISH_OPEN: every client that reaches this node may publish and read the"
                " admin endpoints; set HUB_PUBLISH_TOKENS unless the network is private"
            )
        else:
            log.warning(
                "no publish credential configured (HUB_PUBLISH_TOKENS or a JWT key): only local,"
                " unproxied clients may publish or read /channels and /metrics"
            )

    def drain(self) -> int:
        """Refuse new streams and end the open ones, each told to come back
        (to another node) after a jittered ``retry:``. Returns how many."""
        self.state.draining = True
        self.monitor.close()  # ends the dashboards' /_hub/stats streams
        if self.hub is None:
            return 0
        count = self.hub.close_all(self.streams.come_back)
        log.info("draining: ended %d streams", count)
        return count

    async def stop(self) -> None:
        self._takes = self._now = False
        if self.hub is None:
            return
        self.drain()
        if self._trimmer is not None:
            self._trimmer.cancel()
            await asyncio.gather(self._trimmer, return_exceptions=True)
        await self.monitor.stop()
        await self.hub.stop()
        self.state.hub = None
        log.info("hub stopped")


def create_app(settings: Settings | None = None) -> HubApp:
    return HubApp(settings or Settings())
