"""A TCP proxy in front of a redis-server that can lose a script's reply.

Armed with ``cut_replies = n``, it lets the next ``n`` script calls
(``EVALSHA``/``EVAL``) through to Redis, which runs them, and then, instead of
forwarding the reply, closes that connection both ways: the caller sees its
connection cut between the write and its reply, the case where a retry may
store an event twice. Only a reply that is an array (the script's ids) is
swallowed, so a ``NOSCRIPT`` error still reaches the caller.

It runs its own event loop in a thread, so that a test may block (starting
a hub process) while the proxy serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.support.procs import free_port


class CutProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        # Script replies still to swallow, and how many were.
        self.cut_replies = 0
        self.cuts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cut-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("the proxy did not start")

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._started.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            # Connections still being served end here, not when the closed loop's tasks are
            # collected (their cleanup would then await on a closed loop).
            loop.run_until_complete(_cancel_the_rest())
            loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        armed = asyncio.Event()

        async def upstream() -> None:
            while chunk := await client_r.read(65536):
                if self.cut_replies > 0 and (b"EVALSHA" in chunk.upper() or b"EVAL" in chunk.upper()):
                    armed.set()
                server_w.write(chunk)
                await server_w.drain()

        async def downstream() -> None:
            while chunk := await server_r.read(65536):
                if armed.is_set() and chunk.startswith(b"*") and self.cut_replies > 0:
                    self.cut_replies -= 1
                    self.cuts += 1
                    return  # the reply is lost: both sides are closed below
                client_w.write(chunk)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _cancel_the_rest() -> None:
    rest = asyncio.all_tasks() - {asyncio.current_task()}
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
