"""Property-based fuzzing of the ASGI app: whatever the channel name, body,
headers, query string or Last-Event-ID, the answer is a 2xx or a JSON 4xx,
never a 5xx nor a hang, and another channel's events are untouched."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.http.app import HubApp, create_app
from hub.settings import Settings
from hub.tokens import mint

SECRET = "f" * 40
# Statuses the fuzzing got, to check that it reached the endpoints and not only the refusals.
SEEN: Counter[int] = Counter()
CANARY = "canary"

# Text a client could put in a path, query or header: ASCII mostly, some of the rest.
_chars = st.characters(codec="latin-1", exclude_characters="\r\n")
_text = st.text(_chars, max_size=40)
_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
    _text,
    st.sampled_from(["", "user-1", "a/b", "..", "%2e", "x" * 300, "private-x"]),
).filter(lambda name: not name.startswith(CANARY))
_header_names = st.sampled_from(
    [
        b"last-event-id",
        b"content-type",
        b"authorization",
        b"origin",
        b"cookie",
        b"x-forwarded-for",
        b"accept",
        b"content-length",
        b"x-junk",
    ]
)
_header_values = st.one_of(
    st.binary(max_size=60).filter(lambda v: b"\r" not in v and b"\n" not in v),
    st.sampled_from(
        [
            b"application/json",
            b"text/plain",
            b"Bearer ",
            b"Bearer " + mint(SECRET, subscribe=["*"]).encode(),
            b"Bearer x.y.z",
            b"Bearer pub-token-fuzz-0001",
            b"Bearer pub-token-fuzz-0001",
            b"text/event-stream",
            b"earliest",
            b"1-0",
            b"99999999999999999999-0",
            b"0-18446744073709551616",
        ]
    ),
)
_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b'{"data": 1}',
            b'[{"data": 1}, {"data": "x", "event": "e"}]',
            b'{"data": 1, "event": "a\\nb"}',
            b'{"data": 1, "retry": -1}',
            b"[]",
            b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),  # big ints and NaN too
)


async def drive(
    app: HubApp, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes]:
    """One request straight through the ASGI interface; a stream is left as soon as it starts."""
    status: list[int] = []
    chunks: list[bytes] = []
    started = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            started.set()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("hub", 80),
        "root_path": "",
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert status, "no answer"
    return status[0], b"".join(chunks)


@pytest.fixture(scope="module")
def loop_and_app() -> Any:
    loop = asyncio.new_event_loop()
    settings_ = Settings(
        jwt_secret=SECRET, private_channels="private-*", publish_tokens="pub-token-fuzz-0001"
    )
    app = create_app(settings_)
    loop.run_until_complete(app.start())
    # The canary: three events no fuzzed request may touch.
    hub = app.hub
    assert hub is not None
    from hub.core.event import Payload

    ids = loop.run_until_complete(hub.broker.publish(CANARY, [Payload("json", str(n)) for n in range(3)]))
    yield loop, app, ids
    loop.run_until_complete(app.stop())
    loop.close()


def _check(status: int, body: bytes, method: str) -> None:
    assert status < 500, (status, body[:300])
    if status >= 400 and method != "HEAD":
        error = orjson.loads(body)
        assert isinstance(error["error"], str)
        assert isinstance(error["detail"], str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]),
    route=st.sampled_from(["/channels/{}/stream", "/channels/{}/events", "/stream", "/channels", "/{}"]),
    name=_names,
    query=st.lists(
        st.tuples(
            st.sampled_from(["channel", "last_event_id", "access_token", "limit", "cursor", "prefix", "x"]),
            _text,
        ),
        max_size=5,
    ),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=6),
    body=_bodies,
)
def test_any_request_gets_a_2xx_or_a_json_4xx_and_the_canary_is_untouched(
    loop_and_app: Any,
    method: str,
    route: str,
    name: str,
    query: list[tuple[str, str]],
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    loop, app, ids = loop_and_app
    from urllib.parse import urlencode

    path = route.format(name)
    status, answer = loop.run_until_complete(
        drive(app, method, path, urlencode(query).encode("latin-1", "replace"), headers, body)
    )
    _check(status, answer, method)
    SEEN[status] += 1
    stats = app.hub.broker.channel_stats(CANARY)
    assert stats is not None
    assert stats.last_id == ids[-1]
    assert stats.buffered == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=_names,
    content_type=st.sampled_from([b"application/json", b"text/plain", b"text/plain; charset=utf-8", b"x/y"]),
    query=st.lists(st.tuples(st.sampled_from(["event", "retry", "x"]), _text), max_size=2),
    body=_bodies,
)
def test_publishes_with_a_good_credential_get_a_202_or_a_json_4xx(
    loop_and_app: Any, name: str, content_type: bytes, query: list[tuple[str, str]], body: bytes
) -> None:
    loop, app, _ = loop_and_app
    from urllib.parse import urlencode

    headers = [(b"authorization", b"Bearer pub-token-fuzz-0001"), (b"content-type", content_type)]
    status, answer = loop.run_until_complete(
        drive(app, "POST", f"/channels/{name}/events", urlencode(query).encode(), headers, body)
    )
    _check(status, answer, "POST")
    SEEN[status] += 1
    assert app.hub.broker.channel_stats(CANARY).buffered == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(_names, min_size=1, max_size=3),
    last_event_id=_header_values,
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=3),
)
def test_streams_get_a_200_or_a_json_4xx(
    loop_and_app: Any, names: list[str], last_event_id: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    loop, app, _ = loop_and_app
    from urllib.parse import urlencode

    if len(names) == 1:
        path, query = f"/channels/{names[0]}/stream", b""
    else:
        path, query = "/stream", urlencode([("channel", n) for n in names]).encode("latin-1", "replace")
    status, answer = loop.run_until_complete(
        drive(app, "GET", path, query, [(b"last-event-id", last_event_id), *headers], b"")
    )
    _check(status, answer, "GET")
    SEEN[status] += 1


def test_the_fuzzing_reached_publishes_streams_and_refusals() -> None:
    assert SEEN[202] > 0, SEEN
    assert SEEN[200] > 0, SEEN
    assert SEEN[400] + SEEN[413] > 0, SEEN
    assert SEEN[401] + SEEN[403] > 0, SEEN
