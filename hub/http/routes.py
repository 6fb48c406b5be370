"""The raw hot paths' route table: endpoints that keep the ASGI signature,
matched (and refused with 405) in one place.

A :class:`Route` answers :meth:`Route.matches` with NONE (not this route's
path), PARTIAL (its path, another method: ``405`` with ``Allow``) or FULL,
as Starlette's ``BaseRoute.matches`` does, and puts what its path names in
``scope["path_params"]``. What no route takes, CORS preflights included,
goes to the fallback app (FastAPI).

Every request a route takes passes :meth:`Router.admit` first: the one place
where a request is counted and its route's guard (:mod:`hub.http.auth`) is
asked, for streams and publishes alike; what goes to the fallback passes the
fallback's guard (the admin endpoints).

    router = Router([Route("publish", channel_events, {"POST"}, publish)], fallback=api)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from enum import Enum

from hub.http.auth import Refusal
from hub.http.errors import send_json_error
from hub.http.types import ASGIApp, Receive, Scope, Send

PathMatch = Callable[[str], "dict[str, str] | None"]
Headers = list[tuple[bytes, bytes]]
# A request's refusal, or None to let it through. It may note what it found in the scope.
Guard = Callable[[Scope], "Refusal | None"]


class Match(Enum):
    NONE = 0
    PARTIAL = 1
    FULL = 2


def between(prefix: str, suffix: str, name: str) -> PathMatch:
    """Paths ``prefix + X + suffix``, naming X ``name``.

    X may be empty or hold a ``/``: the endpoint refuses such a channel as
    ``400 bad_channel``, which says more than a ``404``. ASGI's path is already
    percent-decoded: decoding again would let ``%2541`` through as ``A``.
    """
    shortest = len(prefix) + len(suffix)

    def match(path: str) -> dict[str, str] | None:
        if len(path) >= shortest and path.startswith(prefix) and path.endswith(suffix):
            return {name: path[len(prefix) : len(path) - len(suffix)]}
        return None

    return match


def exactly(path: str) -> PathMatch:
    def match(candidate: str) -> dict[str, str] | None:
        return {} if candidate == path else None

    return match


# The raw paths. hub.http.protocol also needs to know a stream when it sees one.
channel_stream = between("/channels/", "/stream", "channel")
multi_stream = exactly("/stream")
channel_events = between("/channels/", "/events", "channel")


def is_stream(method: str, path: str) -> bool:
    return method == "GET" and (channel_stream(path) is not None or multi_stream(path) is not None)


class Route:
    __slots__ = ("allow", "endpoint", "guard", "match_path", "methods", "name", "refusal")

    def __init__(
        self,
        name: str,
        match_path: PathMatch,
        methods: Collection[str],
        endpoint: ASGIApp,
        refusal: str = "",
        guard: Guard | None = None,
    ) -> None:
        self.name = name
        self.guard = guard
        self.match_path = match_path
        self.methods = frozenset(methods)
        self.endpoint = endpoint
        self.allow = ", ".join(sorted(self.methods)).encode()
        # The detail of this route's 405.
        self.refusal = refusal or f"use {', '.join(sorted(self.methods))}"

    def matches(self, scope: Scope) -> tuple[Match, dict[str, str]]:
        params = self.match_path(scope["path"])
        if params is None:
            return Match.NONE, {}
        return (Match.FULL if scope["method"] in self.methods else Match.PARTIAL), params


class Router:
    """The ASGI app in front: the raw routes, then the fallback."""

    def __init__(
        self,
        routes: list[Route],
        fallback: ASGIApp,
        cors: Callable[[Scope], Headers] = lambda _: [],
        requests: dict[str, int] | None = None,
        fallback_guard: Guard | None = None,
    ) -> None:
        self.routes = routes
        self.fallback = fallback
        self.fallback_guard = fallback_guard
        self.cors = cors
        # Requests each route took, by name (the app's state: /metrics reads it).
        self.requests = {} if requests is None else requests
        self.requests.update(dict.fromkeys((r.name for r in routes), 0))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_preflight(scope):
            for route in self.routes:
                match, params = route.matches(scope)
                if match is Match.NONE:
                    continue
                if match is Match.PARTIAL:
                    headers = [(b"allow", route.allow), *self.cors(scope)]
                    await send_json_error(send, 405, "method_not_allowed", route.refusal, headers)
                    return
                scope["path_params"] = params
                refusal = self.admit(route, scope)
                if refusal is None:
                    await route.endpoint(scope, receive, send)
                else:
                    await self.refuse(scope, send, refusal)
                return
            if self.fallback_guard is not None:
                refusal = self.fallback_guard(scope)
                if refusal is not None:
                    await self.refuse(scope, send, refusal)
                    return
        await self.fallback(scope, receive, send)

    def admit(self, route: Route, scope: Scope) -> Refusal | None:
        """None when the request goes on to ``route``'s endpoint, else its refusal.
        Every request is counted here; credentials are checked here (the route's
        guard). Synchronous: no await on the hot paths for it."""
        self.requests[route.name] += 1
        return route.guard(scope) if route.guard is not None else None

    async def refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        headers = [*refusal.headers, *self.cors(scope)]
        await send_json_error(send, refusal.status, refusal.error, refusal.detail, headers)


def _is_preflight(scope: Scope) -> bool:
    return scope["method"] == "OPTIONS" and any(
        key.lower() == b"access-control-request-method" for key, _ in scope["headers"]
    )
