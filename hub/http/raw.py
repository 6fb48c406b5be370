"""What the raw ASGI endpoints share: the app's state, limits, CORS.

Streams (:mod:`hub.http.stream`) and publishes (:mod:`hub.http.publish`) are
the two hot paths, served in front of FastAPI. FastAPI's ``CORSMiddleware``
still covers the other routes and answers every preflight (``OPTIONS``); the
raw endpoints add the same ``Access-Control-Allow-Origin`` through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hub.core.hub import Hub
from hub.http.auth import Auth
from hub.http.counters import HttpStats
from hub.http.types import Scope
from hub.inputs import Limits
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.http.protocol import ConnectionGuard

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class AppState:
    """The app's state, one per process, typed: what every endpoint reads
    (the hub is set by the app's lifespan)."""

    hub: Hub | None = None
    draining: bool = False
    # The connection guard of the server this app runs under (hub.http.protocol), if any.
    connections: ConnectionGuard | None = None
    # Requests the raw routes took, by route name (hub.http.routes.Router.admit).
    requests: dict[str, int] = field(default_factory=dict)
    # Publishes and the loop's lag, for /metrics and the dashboard (hub.http.counters).
    stats: HttpStats = field(default_factory=HttpStats)
    # With --workers: where the workers' metrics meet, for one scrape of the node (hub.http.metrics).
    metrics_dir: str | None = None


class RawEndpoint:
    def __init__(self, settings: Settings, state: AppState, auth: Auth | None = None) -> None:
        self.settings = settings
        self.state = state
        self.auth = auth if auth is not None else Auth(settings)
        self.limits = Limits(
            settings.max_event_bytes, settings.max_body_bytes, settings.max_channels_per_stream
        )
        self.origins = settings.cors_origin_list

    def cors(self, origin: str | None) -> Headers:
        return cors_headers(self.origins, origin)


def cors_headers(origins: list[str], origin: str | None) -> Headers:
    """The CORS headers for a request from ``origin`` under ``HUB_CORS_ORIGINS``.

    An exact origin may send cookies (``HUB_JWT_COOKIE``); ``*`` never does.
    """
    if "*" in origins:
        return [(b"access-control-allow-origin", b"*")]
    if origin and origin in origins:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]
    return []


def origin_of(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == b"origin":
            return str(value.decode("latin-1"))
    return None
