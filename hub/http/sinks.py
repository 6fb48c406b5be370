"""Where a stream's bytes go: the two :class:`hub.core.subscriber.Sink` kinds.

:class:`TransportSink` is the fast path under uvicorn's httptools protocol:
after the response head is sent through ASGI, frames are written straight to
the asyncio transport as HTTP/1.1 chunks, synchronously, from the hub's
flush. No task, queue or ``await`` per delivery; backpressure is the
transport's own write buffer. It relies on uvicorn internals (the bound
``send`` of ``RequestResponseCycle``), checked at run time, and
``tests/http/test_sinks.py`` pins that it is taken under ``ssehub serve``.

:class:`AsgiSink` is the portable path for any other server or wrapped
``send``: frames are buffered and one writer coroutine (the request's own
task) hands them to ``send`` in one message per wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from hub.core.subscriber import Batch, SinkClosed
from hub.http.types import Receive, Send

_END = b"0\r\n\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (done once per batch, shared by all subscribers)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class TransportSink:
    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    @classmethod
    def from_send(cls, send: Send, scope: dict[str, Any] | Any) -> TransportSink | None:
        """The fast path when ``send`` is uvicorn's own, after a chunked response head."""
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if (
            transport is None
            or type(cycle).__name__ != "RequestResponseCycle"
            or getattr(cycle, "chunked_encoding", None) is not True
            or not getattr(cycle, "response_started", False)
            or getattr(cycle, "response_complete", True)
            or not hasattr(transport, "get_write_buffer_size")
        ):
            return None
        return cls(transport)

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            # It would drop the bytes silently: that stream is over.
            raise SinkClosed
        if data:
            self.write_batch(Batch(data))

    def write_batch(self, batch: Batch) -> int:
        # The hot path: one write of bytes shared by every subscriber. uvloop
        # raises RuntimeError once the transport is closed (asyncio's own drops
        # the bytes); the connection is gone either way, which the hub handles.
        transport = self._transport
        try:
            transport.write(batch.framed(chunk))
        except (RuntimeError, OSError) as exc:
            raise SinkClosed from exc
        return transport.get_write_buffer_size()

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def drained(self) -> None:
        # uvicorn's flow control is paused above the transport's high-water mark
        # and resumed below its low-water mark, or when the connection is lost.
        flow = getattr(self._transport.get_protocol(), "flow", None)
        if flow is not None and hasattr(flow, "drain"):
            if flow.write_paused:
                await flow.drain()
            return
        # No flow control to wait on (not uvicorn's protocol): poll, as a last resort.
        while self.buffered() and not self._transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def close(self, final: bytes = b"") -> None:
        transport = self._transport
        if not transport.is_closing():
            with contextlib.suppress(RuntimeError, OSError):
                transport.write((chunk(final) if final else b"") + _END)
            # uvicorn sees the connection go and ends the request's receive().
            transport.close()

    def abort(self) -> None:
        # Reset rather than close: a plain close leaves the kernel trickling
        # megabytes of queued data to a client that does not read. With a
        # zero linger the queue is dropped and the client sees the reset now.
        transport = self._transport
        if transport.is_closing():
            # Already going: connection_lost is on its way to the request's receive().
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()


class AsgiSink:
    __slots__ = ("_aborted", "_buffer", "_closing", "_idle", "_send", "_size", "_wake")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._buffer: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        # Set whenever the buffer is empty (handed to ``send``) or the stream is over.
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._aborted = False

    def write(self, data: bytes) -> None:
        if self._aborted:
            raise SinkClosed
        if data and not self._closing:
            self._buffer.append(data)
            self._size += len(data)
            self._idle.clear()
            self._wake.set()

    def write_batch(self, batch: Batch) -> int:
        self.write(batch.raw)
        return self._size

    def buffered(self) -> int:
        return self._size

    async def drained(self) -> None:
        await self._idle.wait()

    def close(self, final: bytes = b"") -> None:
        if not self._aborted:
            self.write(final)
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._aborted = True
        self._idle.set()
        self._wake.set()

    async def run(self, receive: Receive) -> None:
        """Write until the stream ends: client gone, closed or aborted by the hub."""
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        watcher.add_done_callback(lambda _: self.abort())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._aborted:
                    return
                data = b"".join(self._buffer)
                self._buffer.clear()
                self._size = 0
                try:
                    await self._send(
                        {"type": "http.response.body", "body": data, "more_body": not self._closing}
                    )
                except OSError:  # the client went away mid-send (the server's ClientDisconnected)
                    return
                if not self._buffer:
                    self._idle.set()
                if self._closing:
                    return
        finally:
            self._aborted = True
            self._idle.set()
            watcher.cancel()
