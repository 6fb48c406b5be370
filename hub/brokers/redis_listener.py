"""The process's one Redis pub/sub connection: read, confirm, ping, reconnect.

redis-py's ``PubSub`` reconnects and re-subscribes by itself inside a read,
so a caller cannot know that it was cut off and which messages it missed.
This listener owns a bare connection instead: it never reconnects silently,
it tells its owner when it is connected (``on_connected``, which re-subscribes
and refills from the streams) and when it was lost (``on_lost``), and it
waits a capped, jittered backoff between attempts so that a fleet of hubs
does not hammer a Redis that is coming back. The backoff keeps growing over
attempts that fail, even those that connected and then failed (a refill that
breaks, a Redis that accepts and drops): it starts again from the bottom only
after a connection stayed up for ``healthy_seconds``. Failures are logged as
one line each, at most once per ``log_seconds`` (with how many there were).

A PING on a quiet connection catches a peer that vanished without closing
the socket.

With ``sharded=True`` it speaks Redis 7's sharded pub/sub (``SSUBSCRIBE``,
``smessage``) to one node of a cluster: one ``SSUBSCRIBE`` per topic (a
command's channels must share a slot), a refusal of one (``MOVED``: the node
no longer serves that slot) fails that topic's subscribe only, and an
``sunsubscribe`` the hub did not ask for (the slot was migrated away, or the
node was demoted) is reported through ``on_unsubscribed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from hub.core.throttle import Throttle

log = logging.getLogger(__name__)

OnMessage = Callable[[bytes, bytes], None]


class PubSubListener:
    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        on_message: OnMessage,
        on_connected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None],
        *,
        ping_seconds: float = 5.0,
        confirm_seconds: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        healthy_seconds: float = 30.0,
        log_seconds: float = 30.0,
        sharded: bool = False,
        on_unsubscribed: Callable[[bytes], None] | None = None,
        name: str = "redis-pubsub",
    ) -> None:
        self._connect = connect
        self.sharded = sharded
        self._on_unsubscribed = on_unsubscribed
        self.name = name
        self._subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._confirmation = b"ssubscribe" if sharded else b"subscribe"
        self._message = b"smessage" if sharded else b"message"
        # Sharded: topics whose SSUBSCRIBE awaits its reply, in order (a refusal names no topic),
        # and topics being left (their sunsubscribe replies were asked for).
        self._pending: deque[bytes] = deque()
        self._leaving: dict[bytes, int] = {}
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.ping_seconds = ping_seconds
        self.confirm_seconds = confirm_seconds
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.healthy_seconds = healthy_seconds
        # Attempts that failed since the last connection that stayed healthy.
        self.failures = 0
        self._failed = Throttle(log, log_seconds)
        self._undelivered = Throttle(log, log_seconds)
        self._conn: AbstractConnection | None = None
        # Futures resolved by the server's "subscribe" replies, oldest first per topic.
        self._waiting: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event = asyncio.Event()
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Start the connection loop; return after its first attempt, whatever came of it."""
        self.launch()
        await self.started()

    def launch(self) -> None:
        """Start the connection loop (once), without waiting for anything."""
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def started(self) -> None:
        """Return once the first attempt to connect is over, whatever came of it."""
        await self._first_attempt.wait()

    async def stop(self) -> None:
        self._stopping = True
        task = self._task
        if task is not None:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            self._task = None
        self._failed.close()
        self._undelivered.close()

    async def subscribe(self, topics: Iterable[bytes]) -> None:
        """SUBSCRIBE and wait for the server's confirmation of every topic."""
        topics = list(topics)
        if not topics:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for t in topics:
            future: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(t, deque()).append(future)
            futures.append(future)
        try:
            if self.sharded:
                conn = self._conn
                if conn is None or not conn.is_connected:
                    raise RedisConnectionError("the pub/sub connection is down")
                self._pending.extend(topics)
                commands = conn.pack_commands([("SSUBSCRIBE", t) for t in topics])
                await conn.send_packed_command(commands, check_health=False)
            else:
                await self._send("SUBSCRIBE", *topics)
        except BaseException:
            for t, future in zip(topics, futures, strict=True):
                future.cancel()
                with contextlib.suppress(KeyError, ValueError):
                    self._waiting[t].remove(future)
            raise
        async with asyncio.timeout(self.confirm_seconds):
            await asyncio.gather(*futures)

    async def unsubscribe(self, topics: Iterable[bytes]) -> None:
        """UNSUBSCRIBE without waiting: later messages of these topics are ignored anyway."""
        topics = list(topics)
        if topics and self._conn is not None:
            if not self.sharded:
                await self._send("UNSUBSCRIBE", *topics)
                return
            for t in topics:
                self._leaving[t] = self._leaving.get(t, 0) + 1
                await self._send("SUNSUBSCRIBE", t)

    async def _send(self, *args: Any) -> None:
        conn = self._conn
        # redis-py would quietly open a new socket for a closed one: never on this connection.
        if conn is None or not conn.is_connected:
            raise RedisConnectionError("the pub/sub connection is down")
        await conn.send_command(*args, check_health=False)

    # -- the loop -----------------------------------------------------------

    async def _run(self) -> None:
        # Checked as well as cancelled: a library timeout that fires together with the
        # cancellation can turn it into a TimeoutError, which this loop would retry forever.
        while not self._stopping:
            conn = self._connect()
            up_since: float | None = None
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                up_since = time.monotonic()
                log.info("pub/sub connection up")
                await self._session(conn)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failure(up_since, "pub/sub connection lost or refused: %s", exc)
            except Exception as exc:  # a bug must not end the loop: the process would never recover
                log.debug("pub/sub connection failed", exc_info=True)
                self._failure(up_since, "pub/sub connection failed: %r", exc)
            finally:
                was_up = self._conn is not None
                self._conn = None
                self._fail_waiters()
                self._first_attempt.set()
                if was_up and not self._stopping:
                    self._on_lost()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            if not self._stopping:
                await asyncio.sleep(self._backoff(self.failures))

    def _failure(self, up_since: float | None, message: str, exc: BaseException) -> None:
        if up_since is not None and time.monotonic() - up_since >= self.healthy_seconds:
            self.failures = 0  # it had been healthy: start the backoff over
        self.failures += 1
        self._failed.hit(
            message + " (attempt %d failed; backing off up to %.1fs)",
            exc,
            self.failures,
            self._ceiling(self.failures),
        )

    def _ceiling(self, failures: int) -> float:
        return min(self.backoff_cap, self.backoff_base * float(2 ** min(failures, 16)))

    def _backoff(self, failures: int) -> float:
        # "Full jitter": a random wait up to an exponentially growing cap.
        ceiling = self._ceiling(failures)
        return random.uniform(ceiling / 2, ceiling)

    async def _session(self, conn: AbstractConnection) -> None:
        reader = asyncio.create_task(self._read(conn), name=f"{self.name}-reader")
        try:
            # The owner re-subscribes here: the reader must run to see the confirmations.
            await self._on_connected()
            self._first_attempt.set()
            await reader
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, conn: AbstractConnection) -> None:
        try:
            await self._read_until_lost(conn)
        finally:
            # At once, not when the session ends: on_connected may be waiting on them.
            self._fail_waiters()

    async def _read_until_lost(self, conn: AbstractConnection) -> None:
        pinged = False
        on_message = self._on_message
        while True:
            # push_request: under RESP3 (a ?protocol=3 URL) messages are pushes, returned only so.
            try:
                reply = await conn.read_response(timeout=self.ping_seconds, push_request=True)
            except ResponseError as exc:
                if not (self.sharded and self._pending):
                    raise
                self._refused(self._pending.popleft(), exc)  # e.g. MOVED: another node serves it
                continue
            if reply is None:
                if pinged:
                    raise RedisConnectionError(f"no answer to PING in {self.ping_seconds}s")
                await self._send("PING")
                pinged = True
                continue
            pinged = False
            kind = reply[0]
            if kind == self._message:
                try:
                    on_message(reply[1], reply[2])
                except Exception as exc:  # one bad message must not cut every stream
                    log.debug("could not deliver a message of %r", reply[1], exc_info=True)
                    self._undelivered.hit("could not deliver a message of %r: %r", reply[1], exc)
            elif kind == self._confirmation:
                if self.sharded and reply[1] in self._pending:
                    self._pending.remove(reply[1])
                self._confirm(reply[1])
            elif kind == b"sunsubscribe":
                self._unsubscribed(reply[1])

    def _confirm(self, t: bytes) -> None:
        queue = self._waiting.get(t)
        if not queue:
            return
        future = queue.popleft()
        if not queue:
            del self._waiting[t]
        if not future.done():
            future.set_result(None)

    def _refused(self, t: bytes, exc: ResponseError) -> None:
        queue = self._waiting.get(t)
        if queue:
            future = queue.popleft()
            if not queue:
                del self._waiting[t]
            if not future.done():
                future.set_exception(exc)

    def _unsubscribed(self, t: bytes) -> None:
        asked = self._leaving.get(t, 0)
        if asked:
            if asked == 1:
                del self._leaving[t]
            else:
                self._leaving[t] = asked - 1
            return
        # Not asked for: the node no longer serves the topic's slot.
        if self._on_unsubscribed is not None:
            try:
                self._on_unsubscribed(t)
            except Exception:  # the owner's bug must not cut the connection
                log.exception("handling an sunsubscribe of %r failed", t)

    def _fail_waiters(self) -> None:
        self._pending.clear()
        self._leaving.clear()
        waiting, self._waiting = self._waiting, {}
        for queue in waiting.values():
            for future in queue:
                if not future.done():
                    future.set_exception(RedisConnectionError("the pub/sub connection was lost"))
