"""Publishing to the hub over HTTP from Python services, sync and asyncio.

A service publishes with two lines and never writes the retry loop itself::

    from hub.producer import HubClient

    with HubClient("http://127.0.0.1:8000", token=None) as hub:
        event_id = hub.publish("orders", {"id": 42}, event="order")  # "1700000000000-0"
        ids = hub.publish_many("orders", [{"id": 43}, {"id": 44}])   # one request
        hub.publish_text("logs", "a line")                           # text/plain

and with asyncio::

    from hub.producer import AsyncHubClient

    async with AsyncHubClient("http://127.0.0.1:8000", linger=0.005) as hub:
        event_id = await hub.publish("orders", {"id": 42})

Each client keeps one :class:`httpx.Client` (or :class:`httpx.AsyncClient`), so
connections are reused; close it with :meth:`HubClient.close` or a ``with`` block.

Retries: a publish is retried, with exponential backoff and jitter, when the hub
answers 429 or 503 (or a proxy in front of it 502 or 504), honouring the
``Retry-After`` header, and when the hub cannot be reached or a request times
out. It is retried until ``max_wait`` seconds (default 30) have passed; then, or
at once for any other error (400, 401, 413, ...), :class:`PublishError` is raised
with the status and the hub's JSON error body ``{"error": ..., "detail": ...}``.

Every publish call sends an ``Idempotency-Key`` (a random UUID) and the same
key on each of its retries, so a publish whose reply was lost (a read timeout, a
dropped connection, a 502/504 from a proxy) and that the hub had stored is not
stored again: the retry gets the first attempt's ids (within the hub's
``HUB_IDEMPOTENCY_SECONDS``, five minutes by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import quote

import httpx

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BATCH",
    "AsyncHubClient",
    "Event",
    "HubClient",
    "PublishError",
    "retry_after",
]

#: Connect, read, write and pool timeouts of each try (seconds).
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
#: The hub takes 1 to 1000 events per batch request.
MAX_BATCH = 1000
#: Statuses that mean "busy or away, try again later".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: With ``linger``, a batch is sent early once its body reaches this size
#: (well under the hub's default HUB_MAX_BODY_BYTES of 1 MiB).
LINGER_MAX_BYTES = 256 * 1024
# Worth a retry: the request may not have reached the hub, or its reply was lost.
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class PublishError(Exception):
    """A publish that failed for good.

    ``status`` is the HTTP status (``None`` when the hub could not be reached),
    ``error`` and ``detail`` come from the hub's JSON error body (``"unreachable"``
    and the transport error for a hub out of reach), ``attempts`` is how many
    requests were made.
    """

    def __init__(self, status: int | None, error: str, detail: str, attempts: int = 1) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        self.attempts = attempts
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.status} {self.error}" if self.status is not None else self.error
        tries = f" (gave up after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{head}: {self.detail}{tries}"

    def _after(self, attempts: int) -> PublishError:
        self.attempts = attempts
        self.args = (self._message(),)
        return self


@dataclass(frozen=True, slots=True)
class Event:
    """One event of :meth:`HubClient.publish_many` with its own type or retry.

    ``data`` is anything JSON can encode; ``retry`` is the reconnection delay (ms)
    the browser is told."""

    data: Any
    event: str | None = None
    retry: int | None = None


def _event_object(data: Any, event: str | None, retry: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if event is not None:
        body["event"] = event
    if retry is not None:
        body["retry"] = retry
    return body


def _dumps(value: Any) -> bytes:
    """JSON as the hub reads it; NaN and infinities are refused here (ValueError)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _batch_body(events: Iterable[Any], event: str | None, retry: int | None) -> tuple[bytes, int]:
    items = [
        _event_object(e.data, e.event, e.retry) if isinstance(e, Event) else _event_object(e, event, retry)
        for e in events
    ]
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} events, got {len(items)}")
    return _dumps(items), len(items)


def _text_params(event: str | None, retry: int | None) -> dict[str, str]:
    params = {"event": event} if event is not None else {}
    if retry is not None:
        params["retry"] = str(retry)
    return params


def _events_path(channel: str) -> str:
    return f"/channels/{quote(channel, safe='')}/events"


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if seconds == seconds else None


def _error_of(response: httpx.Response) -> PublishError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return PublishError(response.status_code, body["error"], str(body.get("detail", "")))
    text = response.text.strip()[:300] or response.reason_phrase
    return PublishError(response.status_code, f"http_{response.status_code}", text)


def _unreachable(exc: httpx.HTTPError) -> PublishError:
    return PublishError(None, "unreachable", f"{type(exc).__name__}: {exc}")


class _Again(NamedTuple):
    problem: PublishError
    retry_after: float | None


def _judge(response: httpx.Response) -> dict[str, Any] | _Again:
    """A reply -> its JSON answer, or a reason to try again; raises when trying again is no use."""
    if response.is_success:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PublishError(
                response.status_code, "bad_response", f"not a hub answer: {response.text[:300]}"
            )
        return answer
    problem = _error_of(response)
    if response.status_code in RETRY_STATUSES:
        return _Again(problem, retry_after(response.headers.get("Retry-After")))
    raise problem


def _one_id(answer: dict[str, Any]) -> str:
    if not isinstance(answer.get("id"), str):
        raise PublishError(202, "bad_response", f"no id in the hub's answer: {answer!r}")
    return str(answer["id"])


def _ids(answer: dict[str, Any], count: int) -> list[str]:
    ids = answer.get("ids")
    if not isinstance(ids, list) or len(ids) != count or not all(isinstance(i, str) for i in ids):
        raise PublishError(202, "bad_response", f"expected {count} ids in the hub's answer: {answer!r}")
    return [str(i) for i in ids]


class _Schedule:
    """When to try again: exponential backoff with jitter, at least ``Retry-After``,
    never past ``max_wait`` after the first try."""

    def __init__(self, max_wait: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadline = clock() + max_wait
        self.delay = BACKOFF_FIRST
        self.attempts = 0

    def pause(self, problem: PublishError, retry_after: float | None) -> float:
        """The pause before the next try; raises ``problem`` when that would pass ``max_wait``."""
        self.attempts += 1
        pause = random.uniform(self.delay / 2, self.delay)
        if retry_after is not None:
            # A little spread, so that clients told the same Retry-After do not come back at once.
            pause = max(pause, retry_after * random.uniform(1.0, 1.1))
        if self.clock() + pause > self.deadline:
            raise problem._after(self.attempts)
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return pause


def _headers(token: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    out = {"User-Agent": "ssehub-producer", **(headers or {})}
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


class HubClient:
    """A blocking publisher, safe to share between threads.

    ::

        hub = HubClient("http://hub:8000", token="s3cret", max_wait=10)
        try:
            hub.publish("orders", {"id": 42}, event="order")
        except PublishError as exc:
            log.error("order 42 not published: %s (status %s)", exc.detail, exc.status)
        finally:
            hub.close()

    ``timeout`` bounds each try (a number for all four, or an :class:`httpx.Timeout`);
    ``max_wait`` bounds the time spent waiting between tries. ``transport``,
    ``sleep`` and ``clock`` are there for tests. A publish retried after a lost
    reply may be stored twice (see the module's docstring).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_wait: float = 30.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = max_wait
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=url, headers=_headers(token, headers), timeout=timeout, transport=transport
        )

    def publish(self, channel: str, data: Any, *, event: str | None = None, retry: int | None = None) -> str:
        """Publishes one JSON event; returns its id (``"1700000000000-0"``)."""
        body = _dumps(_event_object(data, event, retry))
        return _one_id(self._post(channel, body, "application/json"))

    def publish_many(
        self, channel: str, events: Iterable[Any], *, event: str | None = None, retry: int | None = None
    ) -> list[str]:
        """Publishes 1 to 1000 events in one request; returns their ids in order.

        Each item is an event's data, with ``event`` and ``retry`` as given here,
        or an :class:`Event` with its own. Either all are stored or none."""
        body, count = _batch_body(events, event, retry)
        return _ids(self._post(channel, body, "application/json"), count)

    def publish_text(
        self, channel: str, text: str, *, event: str | None = None, retry: int | None = None
    ) -> str:
        """Publishes ``text`` as it is (``text/plain``): subscribers' data is the text, not JSON."""
        return _one_id(
            self._post(channel, text.encode(), "text/plain; charset=utf-8", _text_params(event, retry))
        )

    def _post(
        self, channel: str, body: bytes, content_type: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        schedule = _Schedule(self.max_wait, self._clock)
        # One key for every attempt of this publish: a retry of one the hub stored
        # although its answer was lost gets the first one's ids, not a second copy.
        headers = {"Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex}
        while True:
            request = self._http.build_request(
                "POST", _events_path(channel), content=body, params=params, headers=headers
            )
            try:
                outcome = _judge(self._http.send(request))
            except _RETRY_ERRORS as exc:
                outcome = _Again(_unreachable(exc), None)
            except httpx.HTTPError as exc:
                raise _unreachable(exc)._after(schedule.attempts + 1) from exc
            except PublishError as exc:
                raise exc._after(schedule.attempts + 1) from None
            if not isinstance(outcome, _Again):
                return outcome
            self._sleep(schedule.pause(*outcome))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(eq=False)
class _Batch:
    """Events waiting to go to one channel together, each with its caller's future."""

    items: list[bytes] = field(default_factory=list)
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    size: int = 2
    full: asyncio.Event = field(default_factory=asyncio.Event)


class AsyncHubClient:
    """The asyncio publisher: :class:`HubClient`'s methods, awaited.

    ::

        async with AsyncHubClient("http://hub:8000", linger=0.005) as hub:
            ids = await asyncio.gather(*(hub.publish("orders", {"id": i}) for i in range(100)))

    With ``linger`` (seconds, default 0: off), :meth:`publish` calls for the same
    channel made within ``linger`` of the first go out as one batch request, up to
    1000 events or 256 KiB; each caller gets its own id, or the error. When the
    hub refuses a batch (400, 413: one bad event), its events are sent one by one
    so that only the bad one fails. ``aclose`` sends what is waiting first.
    A publish retried after a lost reply may be stored twice (see the module's
    docstring).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_wait: float = 30.0,
        linger: float = 0.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = max_wait
        self.linger = linger
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=url, headers=_headers(token, headers), timeout=timeout, transport=transport
        )
        self._batches: dict[str, _Batch] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._closed = False

    async def publish(
        self, channel: str, data: Any, *, event: str | None = None, retry: int | None = None
    ) -> str:
        """Publishes one JSON event; returns its id (``"1700000000000-0"``)."""
        item = _dumps(_event_object(data, event, retry))
        if self.linger <= 0:
            return _one_id(await self._post(channel, item, "application/json"))
        if self._closed:
            raise RuntimeError("the client is closed")
        return await self._join(channel, item)

    async def publish_many(
        self, channel: str, events: Iterable[Any], *, event: str | None = None, retry: int | None = None
    ) -> list[str]:
        """Publishes 1 to 1000 events in one request; returns their ids in order
        (see :meth:`HubClient.publish_many`)."""
        body, count = _batch_body(events, event, retry)
        return _ids(await self._post(channel, body, "application/json"), count)

    async def publish_text(
        self, channel: str, text: str, *, event: str | None = None, retry: int | None = None
    ) -> str:
        """Publishes ``text`` as it is (``text/plain``)."""
        params = _text_params(event, retry)
        return _one_id(await self._post(channel, text.encode(), "text/plain; charset=utf-8", params))

    async def _join(self, channel: str, item: bytes) -> str:
        batch = self._batches.get(channel)
        if batch is None or batch.size + len(item) + 1 > LINGER_MAX_BYTES:
            if batch is not None:
                self._seal(channel, batch)
            batch = self._batches[channel] = _Batch()
            task = asyncio.get_running_loop().create_task(self._flush(channel, batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        batch.items.append(item)
        batch.futures.append(future)
        batch.size += len(item) + 1
        if len(batch.items) >= MAX_BATCH:
            self._seal(channel, batch)
        return await future

    def _seal(self, channel: str, batch: _Batch) -> None:
        """No more events join ``batch``; it goes now."""
        if self._batches.get(channel) is batch:
            del self._batches[channel]
        batch.full.set()

    async def _flush(self, channel: str, batch: _Batch) -> None:
        try:
            if not batch.full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.full.wait(), self.linger)
            self._seal(channel, batch)
            await self._send_batch(channel, batch)
        except BaseException as exc:
            for future in batch.futures:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _send_batch(self, channel: str, batch: _Batch) -> None:
        body = b"[" + b",".join(batch.items) + b"]"
        try:
            ids = _ids(await self._post(channel, body, "application/json"), len(batch.items))
        except PublishError as exc:
            if len(batch.items) == 1 or exc.status is None or exc.status in RETRY_STATUSES:
                raise
            # One bad event must not cost the others theirs: one by one.
            for item, future in zip(batch.items, batch.futures, strict=True):
                try:
                    result = _one_id(await self._post(channel, item, "application/json"))
                except PublishError as one:
                    if not future.done():
                        future.set_exception(one)
                else:
                    if not future.done():
                        future.set_result(result)
            return
        for future, event_id in zip(batch.futures, ids, strict=True):
            if not future.done():
                future.set_result(event_id)

    async def _post(
        self, channel: str, body: bytes, content_type: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        schedule = _Schedule(self.max_wait, self._clock)
        # One key for every attempt of this publish: a retry of one the hub stored
        # although its answer was lost gets the first one's ids, not a second copy.
        headers = {"Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex}
        while True:
            request = self._http.build_request(
                "POST", _events_path(channel), content=body, params=params, headers=headers
            )
            try:
                outcome = _judge(await self._http.send(request))
            except _RETRY_ERRORS as exc:
                outcome = _Again(_unreachable(exc), None)
            except httpx.HTTPError as exc:
                raise _unreachable(exc)._after(schedule.attempts + 1) from exc
            except PublishError as exc:
                raise exc._after(schedule.attempts + 1) from None
            if not isinstance(outcome, _Again):
                return outcome
            await self._sleep(schedule.pause(*outcome))

    async def aclose(self) -> None:
        """Sends the events waiting in batches, then closes the connections."""
        self._closed = True
        for channel, batch in list(self._batches.items()):
            self._seal(channel, batch)
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
