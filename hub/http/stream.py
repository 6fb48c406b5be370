"""The stream endpoints, as a raw ASGI app in front of FastAPI.

``GET /channels/{channel}/stream`` and ``GET /stream?channel=a&channel=b``.
They bypass FastAPI's middleware on purpose: a stream is long-lived and every
wrapper around ``send`` costs on every write, and it would hide uvicorn's
transport from :class:`~hub.http.sinks.TransportSink`.

A stream's life: validate -> refuse when full or draining -> send the head
at once -> attach to the hub: subscribe, write the first bytes (``retry:`` and
``: ok``), replay, go live -> park until the client goes or the hub ends it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import parse_qsl

import orjson

from hub import sse
from hub.core.broker import BrokerUnavailable
from hub.core.hub import Hub
from hub.core.subscriber import Resume, Subscriber
from hub.http.auth import Auth
from hub.http.errors import send_json_error
from hub.http.raw import AppState, RawEndpoint
from hub.http.sinks import AsgiSink, TransportSink, wait_disconnect
from hub.http.streamlog import request_id, stream_ended, stream_refused
from hub.http.types import Receive, Scope, Send
from hub.inputs import InputError, check_channel, pick_last_event_id, resumes_for, stream_channels
from hub.settings import Settings

log = logging.getLogger(__name__)


class StreamEndpoint(RawEndpoint):
    def __init__(self, settings: Settings, state: AppState, auth: Auth | None = None) -> None:
        super().__init__(settings, state, auth)
        # Streams per client address, with HUB_MAX_STREAMS_PER_IP (addresses at 0 are removed).
        self.per_address: dict[str, int] = {}
        # The head goes out at once; these first bytes as soon as every channel is
        # subscribed at the broker, before any replay: a client that has seen
        # ": ok" cannot miss a later publish.
        self.hello = sse.encode_retry(settings.retry_ms) + sse.encode_comment("ok")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # /channels/{channel}/stream names one channel; /stream takes them from the query.
        single: str | None = scope["path_params"].get("channel")
        opened = await self._open(scope, receive, send, single, single is None)
        if opened is None:
            return
        # Only what the open stream needs stays referenced from here on: the
        # request's headers and query die with ``_open``'s frame (memory per
        # stream is what decides how many streams a process holds).
        hub, sub, writer, address = opened
        # What the end line needs, taken now: then the request's headers go (a stream lives
        # for hours, and memory per stream decides how many a process holds).
        rid = request_id(scope)
        scope["headers"].clear()  # the list uvicorn's protocol and cycle share with the scope
        try:
            if writer is not None:
                await writer
            else:
                # The fast sink writes by itself; this task only waits for the client to go.
                await wait_disconnect(receive)
        finally:
            hub.detach(sub)
            if writer is not None:
                writer.cancel()
            if address is not None:
                self._release(address)
            stream_ended(scope, sub, address, rid)

    async def _open(
        self, scope: Scope, receive: Receive, send: Send, single: str | None, multi: bool
    ) -> tuple[Hub, Subscriber, asyncio.Future[None] | None, str | None] | None:
        """Validate, refuse or start the response, attach; None when the stream is already over.

        With the portable sink, its writer runs from before the attach: a replay
        waits for the writer to drain what it wrote.
        """
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            channels = (
                stream_channels([v for k, v in query if k == "channel"], self.limits)
                if multi
                else [check_channel(single or "")]
            )
            last_event_id = pick_last_event_id(
                headers.get("last-event-id"), next((v for k, v in query if k == "last_event_id"), None)
            )
            resumes = resumes_for(last_event_id, len(channels), multi)
        except InputError as exc:
            await send_json_error(send, exc.status, exc.error, exc.detail)
            return None
        hub = self.state.hub
        if hub is None or self.state.draining or len(hub.subscribers) >= self.settings.max_connections:
            if hub is not None:
                hub.stats.refused += 1
            why = "draining" if hub is None or self.state.draining else "full"
            stream_refused(scope, channels, why)
            await self._refuse(send, headers, why)
            return None
        cap = self.settings.max_streams_per_ip
        address = None
        if cap:
            address = self.auth.client_address(scope)
            if self.per_address.get(address, 0) >= cap:
                hub.stats.refused += 1
                stream_refused(scope, channels, "too many streams from this address", address)
                await self._refuse(send, headers, "address")
                return None
            self.per_address[address] = self.per_address.get(address, 0) + 1
        opened = None
        try:
            opened = await self._start(scope, receive, send, hub, headers, channels, multi, resumes)
        finally:
            # The address's slot stays taken only by a stream that is open (released in __call__).
            if opened is None and address is not None:
                self._release(address)
        if opened is None:
            return None
        sub, writer = opened
        return hub, sub, writer, address

    async def _start(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        hub: Hub,
        headers: dict[str, str],
        channels: list[str],
        multi: bool,
        resumes: list[Resume | None],
    ) -> tuple[Subscriber, asyncio.Future[None] | None] | None:
        """Send the head and attach; None for a HEAD (no stream follows)."""
        await send({"type": "http.response.start", "status": 200, "headers": self._headers(headers)})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return None
        fast = TransportSink.from_send(send, scope)
        sink = fast if fast is not None else AsgiSink(send)
        writer = asyncio.ensure_future(sink.run(receive)) if isinstance(sink, AsgiSink) else None
        sub = Subscriber(channels, sink, multi=multi)
        try:
            await hub.attach(sub, resumes, greeting=self.hello)
        except BrokerUnavailable as exc:
            log.warning("stream of %s ended: broker unavailable (%s)", ",".join(channels), exc)
            sink.close(self.come_back())
        except BaseException:
            hub.detach(sub)
            if writer is not None:
                writer.cancel()
            raise
        expires = scope.get("hub.expires")
        if expires is not None:
            hub.end_at(sub, expires, self._expired(channels, multi))
        return sub, writer

    def _release(self, address: str) -> None:
        left = self.per_address.get(address, 0) - 1
        if left > 0:
            self.per_address[address] = left
        else:
            self.per_address.pop(address, None)

    @staticmethod
    def _expired(channels: list[str], multi: bool) -> bytes:
        """``hub.expired``: no id (the client's cursor stays), then the stream closes."""
        data = {"channels": channels} if multi else {"channel": channels[0]}
        return sse.encode_event(orjson.dumps(data).decode(), event="hub.expired")

    def _headers(self, request: dict[str, str]) -> list[tuple[bytes, bytes]]:
        out = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        out.extend(self.cors(request.get("origin")))
        return out

    def come_back(self) -> bytes:
        """A ``retry:`` with jitter, so refused clients do not return in step."""
        base = max(self.settings.retry_ms, 1000)
        return sse.encode_retry(int(base * random.uniform(0.5, 1.5))) + sse.encode_comment("come back later")

    async def _refuse(self, send: Send, headers: dict[str, str], why: str) -> None:
        """Too many streams, or shutting down.

        A browser's EventSource treats every non-200 answer as final and never
        retries, so it gets an empty 200 stream with a jittered ``retry:`` and
        comes back later; other clients get a 503 they can read.
        """
        if "text/event-stream" in headers.get("accept", ""):
            body = self.come_back()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        *self._headers(headers),
                        (b"content-length", str(len(body)).encode()),
                        # the socket is freed at once: a full node keeps no idle keep-alives
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        cors = self.cors(headers.get("origin"))
        if why == "address":
            detail = f"this address holds its maximum of {self.settings.max_streams_per_ip} streams"
            await send_json_error(send, 429, "too_many_streams", detail, [(b"retry-after", b"5"), *cors])
            return
        detail = (
            "this node is shutting down; reconnect (to another node)"
            if why == "draining"
            else f"this node holds its maximum of {self.settings.max_connections} streams"
        )
        await send_json_error(send, 503, "unavailable", detail, [(b"retry-after", b"2"), *cors])
