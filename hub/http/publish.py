"""``POST /channels/{channel}/events``, as a raw ASGI app in front of FastAPI.

Publishing is the hub's other hot path: every event starts as one of these
requests. Through FastAPI's middleware, router and dependency solver a publish
cost about three times what it costs here (py-spy: 70% of the process inside
that stack at 6,300 POST/s); the validation itself is the same pure functions
of :mod:`hub.inputs`, and the answers keep the same shape: 202 with the ids,
or a JSON error.
"""

from __future__ import annotations

import logging
import math
import time
from typing import cast
from urllib.parse import parse_qsl

import orjson

from hub.core.broker import Broker, BrokerUnavailable, PublishesNow
from hub.core.event import Payload
from hub.http.auth import header_map
from hub.http.errors import broker_unavailable, error_body
from hub.http.raw import RawEndpoint
from hub.http.types import Receive, Scope, Send
from hub.inputs import InputError, check_channel, check_idempotency_key, parse_publish

log = logging.getLogger(__name__)


class _ClientGone(Exception):
    """The client disconnected before its body was read: nothing to answer."""


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


Headers = list[tuple[bytes, bytes]]
# A whole answer: status, headers (but content-length), body.
Answer = tuple[int, Headers, bytes]
_JSON = (b"content-type", b"application/json")


class _Request:
    """What a publish's headers say, read in one pass."""

    __slots__ = ("content_type", "cors", "declared", "idempotency_key")

    def __init__(self, endpoint: PublishEndpoint, scope: Scope) -> None:
        headers = header_map(scope)
        self.content_type = _text(headers.get(b"content-type"))
        self.declared = _text(headers.get(b"content-length"))
        self.idempotency_key = _text(headers.get(b"idempotency-key"))
        self.cors = endpoint.cors(_text(headers.get(b"origin")))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class PublishEndpoint(RawEndpoint):
    """Both ways a publish is answered share everything but the waiting: the ASGI
    app (``__call__``: the body is received, the broker awaited) and
    :meth:`publish_now`, which :class:`~hub.http.protocol.HubHttpProtocol` calls
    with the whole body when the broker publishes without waiting (the memory
    broker): no task, no ASGI messages, the answer written in the same tick."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = _Request(self, scope)
        try:
            body = await self._body(receive, request.declared)
        except _ClientGone:
            return
        except InputError as exc:
            answer = self._error(exc, request.cors)
            self._count(scope, answer[0], started)
        else:
            answer = await self._publish(scope, request, body, started)
        status, headers, out = answer
        headers.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    def publish_now(self, scope: Scope, body: bytes | None) -> Answer:
        """The whole answer to a publish whose body has arrived (None: it was over the
        limit), without waiting: the broker must be :class:`~hub.core.broker.PublishesNow`."""
        started = time.perf_counter()
        request = _Request(self, scope)
        try:
            channel, payloads, batch, key, broker = self._prepare(scope, request, body)
            ids = cast(PublishesNow, broker).publish_now(channel, payloads, key)
            answer = self._accepted(channel, ids, batch, request.cors)
        except Exception as exc:
            answer = self._error(exc, request.cors, scope)
        self._count(scope, answer[0], started)
        return answer

    async def publish_later(self, scope: Scope, body: bytes | None) -> Answer:
        """:meth:`publish_now` for a broker that must wait (Redis): the connection runs this
        as the publish's one task, with no ASGI cycle around it."""
        return await self._publish(scope, _Request(self, scope), body, time.perf_counter())

    async def _publish(self, scope: Scope, request: _Request, body: bytes | None, started: float) -> Answer:
        try:
            channel, payloads, batch, key, broker = self._prepare(scope, request, body)
            ids = await broker.publish(channel, payloads, key)
            answer = self._accepted(channel, ids, batch, request.cors)
        except Exception as exc:
            answer = self._error(exc, request.cors, scope)
        self._count(scope, answer[0], started)
        return answer

    def _prepare(
        self, scope: Scope, request: _Request, body: bytes | None
    ) -> tuple[str, list[Payload], bool, str | None, Broker]:
        """Checked: the channel, the events, whether a batch, the idempotency key, and the
        broker to publish them to. ``body`` None: it was over the limit (413)."""
        channel: str = scope["path_params"]["channel"]
        check_channel(channel)
        if body is None:
            limit = self.settings.max_body_bytes
            raise InputError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        hub = self.state.hub
        if hub is None:
            raise BrokerUnavailable("the hub is not running")
        raw_query = scope["query_string"]
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
        payloads, batch = parse_publish(request.content_type, body, query, self.limits)
        limiter = self.auth.limiter
        if limiter is not None:
            wait = limiter.take(scope.get("hub.principal") or "local", len(payloads))
            if wait:
                raise _RateLimited(wait)
        if not hub.broker.ready:
            raise BrokerUnavailable(f"{hub.broker.name} broker is not connected")
        # A retry with the key of an earlier publish gets that publish's ids, stored once.
        return channel, payloads, batch, check_idempotency_key(request.idempotency_key), hub.broker

    def _accepted(self, channel: str, ids: list[str], batch: bool, cors: Headers) -> Answer:
        self.state.stats.accepted(channel, len(ids))
        answer = {"channel": channel, "ids": ids} if batch else {"channel": channel, "id": ids[0]}
        return 202, [_JSON, *cors], orjson.dumps(answer)

    def _error(self, exc: Exception, cors: Headers, scope: Scope | None = None) -> Answer:
        if isinstance(exc, InputError):
            return exc.status, [_JSON, *cors], error_body(exc.error, exc.detail)
        if isinstance(exc, BrokerUnavailable):
            status, error, detail, extra = broker_unavailable(exc)
            headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
            return status, [_JSON, *headers, *cors], error_body(error, detail)
        if isinstance(exc, _RateLimited):
            rate = self.settings.publish_rate
            retry = (b"retry-after", str(max(1, math.ceil(exc.wait))).encode())
            detail = f"over the publish rate of {rate:g} events/s for this credential; retry later"
            return 429, [_JSON, retry, *cors], error_body("rate_limited", detail)
        channel = scope["path_params"]["channel"] if scope is not None else "?"
        log.error("publish to %s failed", channel, exc_info=exc)
        detail = "the hub failed to handle this request; it is logged"
        return 500, [_JSON, *cors], error_body("internal_error", detail)

    def _count(self, scope: Scope, status: int, started: float) -> None:
        """Once per publish: its answer's status and its latency (for /metrics)."""
        self.state.stats.published(status, time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("publish to %s: %d", scope["path_params"]["channel"], status)

    async def _body(self, receive: Receive, declared: str | None) -> bytes:
        """The request body, refused (413) as soon as it passes the limit."""
        limit = self.settings.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InputError(413, "body_too_large", f"the body is {declared} bytes, the limit is {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            piece = message.get("body", b"")
            size += len(piece)
            if size > limit:
                raise InputError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
            chunks.append(piece)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
