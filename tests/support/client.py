"""An asyncio SSE test client: httpx for HTTP, the hub's own spec parser for the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from hub.sse import SSEEvent, SSEParser


class Stream:
    """An open SSE response: events, comments and the raw bytes seen so far."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.raw = bytearray()
        self.events: list[SSEEvent] = []
        self._chunks = response.aiter_raw()
        self.closed = False

    @property
    def comments(self) -> list[str]:
        return self.parser.comments

    async def _pump(self) -> None:
        try:
            chunk = await self._chunks.__anext__()
        except (StopAsyncIteration, httpx.RemoteProtocolError, httpx.ReadError):
            self.closed = True
            return
        self.raw.extend(chunk)
        self.events.extend(self.parser.feed(chunk))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        """Read until ``count`` events arrived in all; returns them all."""
        async with asyncio.timeout(timeout):
            while len(self.events) < count and not self.closed:
                await self._pump()
        if len(self.events) < count:
            raise AssertionError(f"stream closed after {len(self.events)} of {count} events")
        return self.events

    async def wait_bytes(self, needle: bytes, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.raw and not self.closed:
                await self._pump()
        if needle not in self.raw:
            raise AssertionError(f"stream closed before {needle!r} arrived: {bytes(self.raw)!r}")

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self._pump()


def client(**kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient fit for many long streams (no read timeout, no pool cap)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        **kwargs,
    )


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None = None, first_bytes: bool = True
) -> AsyncIterator[Stream]:
    request = http.build_request("GET", url, headers={"Accept": "text/event-stream", **(headers or {})})
    response = await http.send(request, stream=True)
    try:
        stream = Stream(response)
        if response.status_code == 200 and first_bytes:
            await stream.wait_bytes(b": ok\n")
        yield stream
    finally:
        await response.aclose()


async def publish(
    http: httpx.AsyncClient,
    base: str,
    channel: str,
    data: Any,
    event: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    body: dict[str, Any] = {"data": data}
    if event:
        body["event"] = event
    response = await http.post(f"{base}/channels/{channel}/events", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])
