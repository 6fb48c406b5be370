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
from urllib.parse import parse_qsl

import orjson

from hub.core.broker import BrokerUnavailable
from hub.http.errors import broker_unavailable, send_json_error
from hub.http.raw import RawEndpoint
from hub.http.types import Receive, Scope, Send
from hub.inputs import InputError, check_channel, parse_publish

log = logging.getLogger(__name__)


class _ClientGone(Exception):
    """The client disconnected before its body was read: nothing to answer."""


class PublishEndpoint(RawEndpoint):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel: str = scope["path_params"]["channel"]
        origin: str | None = None
        content_type: str | None = None
        declared: str | None = None
        for key, value in scope["headers"]:
            key = key.lower()
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
        cors = self.cors(origin)
        try:
            check_channel(channel)
            hub = self.state.hub
            if hub is None:
                raise BrokerUnavailable("the hub is not running")
            body = await self._body(receive, declared)
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            payloads, batch = parse_publish(content_type, body, query, self.limits)
            if not hub.broker.ready:
                raise BrokerUnavailable(f"{hub.broker.name} broker is not connected")
            ids = await hub.broker.publish(channel, payloads)
        except InputError as exc:
            await send_json_error(send, exc.status, exc.error, exc.detail, cors)
            return
        except BrokerUnavailable as exc:
            status, error, detail, headers = broker_unavailable(exc)
            extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            await send_json_error(send, status, error, detail, [*extra, *cors])
            return
        except _ClientGone:
            return
        except Exception:
            log.exception("publish to %s failed", channel)
            await send_json_error(
                send, 500, "internal_error", "the hub failed to handle this request; it is logged", cors
            )
            return
        answer = {"channel": channel, "ids": ids} if batch else {"channel": channel, "id": ids[0]}
        out = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(out)).encode()),
                    *cors,
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})

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
