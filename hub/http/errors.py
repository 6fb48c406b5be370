"""JSON error bodies ``{"error": ..., "detail": ...}`` for every 4xx and 5xx.

Both the FastAPI routes (through exception handlers) and the raw ASGI stream
endpoint answer errors through here, so clients see one shape everywhere.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hub.core.broker import BrokerUnavailable
from hub.http.types import Send
from hub.inputs import InputError

log = logging.getLogger(__name__)


def error_body(error: str, detail: str) -> bytes:
    return orjson.dumps({"error": error, "detail": detail})


def error_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(error, detail), status, headers=headers, media_type="application/json")


class HeadResponse(Response):
    """The answer to ``HEAD``: the ``GET`` answer's status and headers, its
    ``Content-Length`` included, and no body (RFC 9110, 9.3.2)."""

    def __init__(self, get: Response) -> None:
        super().__init__(b"", get.status_code, background=get.background)
        self.raw_headers = list(get.raw_headers)


def for_method(request: Request, response: Response) -> Response:
    """``response`` as the answer to ``request``: without its body for a ``HEAD``."""
    return HeadResponse(response) if request.method == "HEAD" else response


def broker_unavailable(exc: BrokerUnavailable) -> tuple[int, str, str, dict[str, str]]:
    """The answer to a request the broker cannot serve now: status, error, detail, headers."""
    return 503, "unavailable", f"the broker is unavailable: {exc}", {"Retry-After": "1"}


async def send_json_error(
    send: Send, status: int, error: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The same body, written through raw ASGI (the stream endpoint)."""
    body = error_body(error, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    """Route every error FastAPI/Starlette can raise to the JSON shape."""

    async def on_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        return for_method(request, json_error(exc.status, exc.error, exc.detail))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return for_method(request, json_error(exc.status_code, error_name(exc.status_code), detail, headers))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return for_method(
            request, json_error(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")
        )

    async def on_broker(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BrokerUnavailable)
        return for_method(request, json_error(*broker_unavailable(exc)))

    async def on_any(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return for_method(
            request,
            json_error(500, "internal_error", "the hub failed to handle this request; it is logged"),
        )

    app.add_exception_handler(InputError, on_input)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(BrokerUnavailable, on_broker)
    app.add_exception_handler(Exception, on_any)
