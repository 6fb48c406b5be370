"""The naive SSE hub a FastAPI user would write first (a comparison peer, not a model).

* Every subscriber gets its own ``redis.asyncio`` pub/sub, taken from the client's
  default connection pool (redis-py caps it at 100 connections: the pool runs dry
  around the 100th subscriber, and then publishing fails too).
* The stream is a ``StreamingResponse`` over an async generator.
* Publishing is a plain ``PUBLISH`` of the request body.

Run (the bench runner does this for you, with a redis-server on a free port)::

    NAIVE_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn loadtests.peers.naive.app:app --port 8001
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import redis.asyncio as redis
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

REDIS_URL = os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
# Unset: redis-py's default pool (what most examples use).  The bench's "naive-pool"
# variant sets it high so the naive design can be measured past 100 subscribers.
MAX_CONNECTIONS = int(os.environ.get("NAIVE_MAX_CONNECTIONS", "0")) or None

app = FastAPI(title="naive SSE hub")
client = redis.from_url(REDIS_URL, max_connections=MAX_CONNECTIONS)


@app.get("/readyz")
async def readyz() -> PlainTextResponse:
    """Liveness for the bench runner."""
    return PlainTextResponse("ok")


@app.post("/publish/{channel}")
async def publish(channel: str, request: Request) -> dict[str, int]:
    """Forward the raw body to every subscriber of the channel."""
    receivers = await client.publish(channel, await request.body())
    return {"receivers": int(receivers)}


async def _events(channel: str) -> AsyncIterator[bytes]:
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        async for message in pubsub.listen():
            if message["type"] == "message":
                yield b"data: " + message["data"] + b"\n\n"
    finally:
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()


@app.get("/subscribe/{channel}")
async def subscribe(channel: str) -> StreamingResponse:
    """One redis subscription per client, streamed as text/event-stream."""
    return StreamingResponse(
        _events(channel), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
