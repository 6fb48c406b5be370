"""Whatever a client sends, the app answers 2xx or a JSON 4xx, and never logs a traceback.

Drawn: channel names (valid ones and any text, ``/``, ``.`` and ``..``
included), publish bodies (bytes, text, JSON events and batches of any shape,
deep nesting, integers beyond 64 bits, NaN), content types and Last-Event-ID
values. Requests go through the whole ASGI app in process, raw (no HTTP client
normalises the path). A JSON event the hub accepted is then read back by a
subscriber (replay from ``earliest``) and must mean what was sent: the same
values of the same types, integers exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hub.http.app import HubApp, create_app
from hub.http.types import Message
from hub.inputs import MAX_JSON_DEPTH
from hub.settings import Settings
from hub.sse import SSEEvent, SSEParser

NAME_ALPHABET = "ABCXYZabcxyz0189_.:-"


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    events: list[SSEEvent] = field(default_factory=list)
    complete: bool = False


class Exchange:
    """One request through the ASGI app, raw: the path reaches it as given."""

    def __init__(
        self,
        app: HubApp,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": quote(path).encode(),
            "query_string": urlencode(query or []).encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers or []],
            "client": ("127.0.0.1", 50000),
            "server": ("hub", 80),
        }
        self.body = body
        self.answer = Answer()
        self.parser = SSEParser()
        self.gone = asyncio.Event()
        self.changed = asyncio.Event()
        self.requested = False

    async def receive(self) -> Message:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        answer = self.answer
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            answer.body.extend(chunk)
            if answer.headers.get("content-type", "").startswith("text/event-stream"):
                answer.events.extend(self.parser.feed(chunk))
            answer.complete = not message.get("more_body", False)
        self.changed.set()

    async def run(self) -> Answer:
        await asyncio.wait_for(self.app(self.scope, self.receive, self.send), timeout=10)
        self.answer.complete = True
        self.changed.set()
        return self.answer

    async def until(self, done: Callable[[Answer], bool]) -> None:
        """Wait until ``done`` holds or the response is complete."""
        async with asyncio.timeout(10):
            while not (self.answer.complete or done(self.answer)):
                self.changed.clear()
                await self.changed.wait()

    def leave(self) -> None:
        """The client goes (what ends a stream)."""
        self.gone.set()


def hello(answer: Answer) -> bool:
    return b": ok\n" in answer.body


async def call(
    app: HubApp,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Answer:
    """A whole request; a stream is left once its first bytes came."""
    exchange = Exchange(app, method, path, query=query, headers=headers, body=body)
    task = asyncio.create_task(exchange.run())
    try:
        await exchange.until(hello)
    finally:
        exchange.leave()
    return await task


def assert_well_formed(answer: Answer, method: str = "GET") -> None:
    """2xx, or a 4xx whose body is ``{"error": str, "detail": str}``; never a 5xx.
    (A ``HEAD`` answer has no body at all; FastAPI redirects ``/channels/`` to ``/channels``.)"""
    if answer.status in (307, 308) and answer.headers.get("location") == "http://hub/channels":
        return
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, (answer.status, bytes(answer.body))
    if method == "HEAD":
        assert answer.body == b""
    elif answer.status >= 400:
        assert answer.headers["content-type"] == "application/json"
        error = json.loads(answer.body)
        assert set(error) == {"error", "detail"}
        assert isinstance(error["error"], str)
        assert error["error"]
        assert isinstance(error["detail"], str)


def meaning(value: Any) -> Any:
    """A JSON value with every scalar tagged by its type: 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: meaning(v) for k, v in value.items()}
    if isinstance(value, list):
        return [meaning(v) for v in value]
    return (type(value).__name__, value)


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep(depth: int) -> bytes:
    """JSON text ``depth`` levels deep, written without recursion (json.dumps would
    hit the recursion limit, or not, depending on the stack it is called from)."""
    return b'{"k":[' * (depth // 2) + (b'{"k":1}' if depth % 2 else b"1") + b"]}" * (depth // 2)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Running:
    runner: asyncio.Runner
    errors: Errors


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """One event loop for all examples, and every ERROR the process logs meanwhile."""
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        with asyncio.Runner() as runner:
            yield Running(runner, errors)
    finally:
        logging.getLogger().removeHandler(errors)


valid_names = st.text(st.sampled_from(NAME_ALPHABET), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..")
)
names = st.one_of(
    valid_names,
    st.sampled_from([".", "..", "...", "a/b", "a/../b", "", "x" * 129, "a b", "ö", "a%2Fb", "a?b"]),
    st.text(max_size=20),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(2**64, 2**400),  # orjson alone reads these as floats
    st.integers(-(2**400), -(2**63) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    ),
    st.integers(0, MAX_JSON_DEPTH + 2).map(nested),
    # json.dumps writes these, they are no JSON: refused
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308 * 10]).map(lambda x: [x]),
)
valid_event_types = st.text(st.sampled_from(NAME_ALPHABET), min_size=1, max_size=10).filter(
    lambda t: not t.startswith("hub.")
)
event_types = st.one_of(valid_event_types, st.sampled_from(["", "hub.gap", "a b", 5]), st.text(max_size=10))
retries = st.one_of(
    st.integers(0, 86_400_000), st.integers(-5, 100_000_000), st.text(max_size=5), st.floats(), st.booleans()
)


@st.composite
def json_events(draw: st.DrawFn) -> Any:
    event: dict[str, Any] = {"data": draw(json_values)}
    if draw(st.booleans()):
        event["event"] = draw(event_types)
    if draw(st.booleans()):
        event["retry"] = draw(retries)
    if draw(st.integers(0, 9)) == 0:
        event = draw(st.sampled_from([{**event, "id": "1-0"}, {"nodata": 1}, [event]]))
    return event


json_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
)
text_types = st.sampled_from(["text/plain", "text/plain; charset=UTF-8", "text/plain; charset=latin-1"])
content_types = st.one_of(
    json_types,
    text_types,
    st.sampled_from(["text/html", "", "application/x-www-form-urlencoded"]),
    st.none(),
    st.text(st.characters(codec="latin-1"), max_size=30),
)


@st.composite
def publishes(draw: st.DrawFn) -> tuple[str | None, bytes]:
    """A content type and a body: mostly a JSON event, batch or text, sometimes anything."""
    shape = draw(st.sampled_from(["event", "batch", "deep", "text", "anything"]))
    if shape == "deep":  # up to the limit, and to where orjson stops writing, then reading
        depth = draw(st.one_of(st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 2), st.integers(250, 1030)))
        body = b'{"data": ' + deep(depth) + b"}"
        return draw(json_types), b"[" + body + b"]" if draw(st.booleans()) else body
    if shape == "event":
        return draw(json_types), json.dumps(draw(json_events())).encode()
    if shape == "batch":
        return draw(json_types), json.dumps(draw(st.lists(json_events(), max_size=4))).encode()
    if shape == "text":
        return draw(text_types), draw(st.text()).encode()
    body = draw(
        st.one_of(
            json_values.map(lambda v: json.dumps(v).encode()),
            st.text().map(str.encode),
            st.binary(max_size=64),
        )
    )
    return draw(content_types), body


last_event_ids = st.one_of(
    st.sampled_from(["", "earliest", "1-0", "0-0", "99999999999999-0", "garbage", "1" * 2049]),
    st.text(max_size=40),
)
queries = st.lists(
    st.tuples(st.sampled_from(["event", "retry", "channel", "last_event_id", "x"]), st.text(max_size=8)),
    max_size=3,
)


def expected_events(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    """What subscribers must see of an accepted body: (``json``|``text``, value) per event."""
    if content_type.startswith("text/"):
        text = body.decode()
        return [("text", text.replace("\r\n", "\n").replace("\r", "\n"))]
    value = json.loads(body)  # the stdlib: integers of any size, exactly
    return [("json", meaning(e["data"])) for e in (value if isinstance(value, list) else [value])]


def received(event: SSEEvent, kind: str) -> tuple[str, Any]:
    return (kind, meaning(json.loads(event.data)) if kind == "json" else event.data)


async def scenario(
    channel: str,
    content_type: str | None,
    body: bytes,
    query: list[tuple[str, str]],
    last_event_id: str,
    probe: tuple[str, str],
) -> None:
    # A hub of its own per example: the streams below find no history to replay.
    app = create_app(Settings())
    await app.start()
    try:
        # The FastAPI side: any method on its routes and around them.
        method, path = probe
        assert_well_formed(await call(app, method, path.format(channel=channel), query=query), method)

        # Any stream request gets its answer (a 200 stream is left once its first bytes came).
        lei = [("last-event-id", last_event_id)]
        assert_well_formed(await call(app, "GET", f"/channels/{channel}/stream", headers=lei))
        multi = [*query, ("channel", channel)]
        assert_well_formed(await call(app, "GET", "/stream", query=multi, headers=lei))

        # A subscriber, live before the publish.
        subscriber = Exchange(app, "GET", f"/channels/{channel}/stream")
        reading = asyncio.create_task(subscriber.run())
        await subscriber.until(hello)

        headers = [("content-type", content_type)] if content_type is not None else []
        published = await call(
            app, "POST", f"/channels/{channel}/events", query=query, headers=headers, body=body
        )
        assert_well_formed(published)
        event(f"publish: {published.status}")
        if published.status != 202:
            subscriber.leave()
            await reading
            return
        answer = json.loads(published.body)
        ids = answer["ids"] if "ids" in answer else [answer["id"]]
        expected = expected_events((content_type or "").lower(), body)
        assert len(ids) == len(expected)
        try:
            await subscriber.until(lambda a: any(e.id == ids[-1] for e in a.events))
        finally:
            subscriber.leave()
        await reading
        live = {e.id: e for e in subscriber.answer.events}
        assert [received(live[i], kind) for i, (kind, _) in zip(ids, expected, strict=True)] == expected

        # ... and what a reconnecting subscriber would be replayed.
        assert app.hub is not None
        history = await app.hub.broker.history(channel, None)
        replayed = {e.id: e for e in SSEParser().feed(b"".join(e.frame for e in history.events))}
        assert [received(replayed[i], kind) for i, (kind, _) in zip(ids, expected, strict=True)] == expected
    finally:
        await app.stop()


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    channel=st.integers(0, 3).flatmap(lambda i: names if i == 0 else valid_names),
    publish=publishes(),
    query=st.integers(0, 3).flatmap(lambda i: queries if i == 0 else st.just([])),
    last_event_id=last_event_ids,
    probe=st.tuples(
        st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
        st.sampled_from(
            [
                "/channels",
                "/healthz",
                "/readyz",
                "/metrics",
                "/nowhere",
                "/channels/{channel}",
            ]
        ),
    ),
)
def test_every_answer_is_2xx_or_a_json_4xx_and_accepted_events_round_trip(
    running: Running,
    channel: str,
    publish: tuple[str | None, bytes],
    query: list[tuple[str, str]],
    last_event_id: str,
    probe: tuple[str, str],
) -> None:
    content_type, body = publish
    running.errors.records.clear()
    running.runner.run(scenario(channel, content_type, body, query, last_event_id, probe))
    assert running.errors.records == [], [r.getMessage() for r in running.errors.records]
