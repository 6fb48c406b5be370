"""Every way in accepts exactly the same events: the HTTP API, the publish
script (on fakeredis and on a real redis-server) and the Python publisher,
fed one table of boundary cases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import orjson
import pytest
import redis
from redis.exceptions import ResponseError

from hub.brokers.redis_codec import SCRIPT, script_args
from hub.core.event import Payload
from hub.inputs import InputError, Limits, parse_publish
from hub.publisher import Message, Publisher
from tests.support.procs import RedisServer

pytestmark = [pytest.mark.integration]

LIMITS = Limits(max_event_bytes=100, max_body_bytes=10_000)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "json" (data is JSON text) or "text"
    data: bytes
    event: str = ""
    retry: str = ""
    ok: bool = True


CASES = [
    Case("json", "json", b'{"a":1}'),
    Case("text", "text", b"hello"),
    Case("empty text", "text", b"", ok=False),
    Case("invalid JSON", "json", b"{nope", ok=False),
    Case("JSON that is not one value", "json", b"1 2", ok=False),
    Case("invalid UTF-8", "text", b"caf\xe9", ok=False),
    Case("a surrogate in UTF-8", "text", b"ok\xed\xa0\x80", ok=False),
    Case("100 bytes", "text", b"x" * 100),
    Case("101 bytes", "text", b"x" * 101, ok=False),
    Case("100 bytes of 50 characters", "text", "\u00e9".encode() * 50),
    Case("102 bytes of 51 characters", "text", "\u00e9".encode() * 51, ok=False),
    Case("retry 0", "json", b"1", retry="0"),
    Case("retry at the cap", "json", b"1", retry="86400000"),
    Case("retry past the cap", "json", b"1", retry="86400001", ok=False),
    Case("retry not a number", "json", b"1", retry="soon", ok=False),
    Case("type", "json", b"1", event="order.created:v2"),
    Case("type of 64", "json", b"1", event="t" * 64),
    Case("type of 65", "json", b"1", event="t" * 65, ok=False),
    Case("type with a space", "json", b"1", event="a b", ok=False),
    Case("the hub's own type", "json", b"1", event="hub.gap", ok=False),
]


def http_accepts(case: Case) -> bool:
    query = {k: v for k, v in (("event", case.event), ("retry", case.retry)) if v}
    if case.kind == "text":
        content_type, body = "text/plain; charset=utf-8", case.data
    else:
        try:
            value = orjson.loads(case.data)
        except orjson.JSONDecodeError:
            # The JSON body itself is broken: what HTTP answers for such data.
            content_type, body = "application/json", b'{"data": ' + case.data + b"}"
        else:
            fields: dict[str, Any] = {"data": value}
            if case.event:
                fields["event"] = case.event
            if case.retry:
                fields["retry"] = int(case.retry) if case.retry.isdigit() else case.retry
            content_type, body, query = "application/json", orjson.dumps(fields), {}
    try:
        parse_publish(content_type, body, query, LIMITS)
    except InputError:
        return False
    return True


def script_accepts(client: redis.Redis, case: Case, *ttl: str) -> bool:
    """The script, called as the hub calls it (``ttl`` given) or as earlier callers do."""
    try:
        client.eval(
            SCRIPT,
            1,
            "hub:c:log",
            10,
            *ttl,
            LIMITS.max_event_bytes,
            case.kind,
            case.data,
            case.event,
            case.retry,
        )
    except ResponseError:
        return False
    return True


def publisher_accepts(client: redis.Redis, case: Case) -> bool | None:
    """None where the publisher cannot even express the case (a Python str is never invalid UTF-8)."""
    try:
        text = case.data.decode()
    except UnicodeDecodeError:
        return None
    if case.retry and not case.retry.isdigit():
        return None  # Message.retry is an int
    if case.kind == "json":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None  # Message.data is a value, never JSON text
    else:
        data = text
    message = Message(
        data,
        event=case.event or None,
        retry=int(case.retry) if case.retry else None,
        text=case.kind == "text",
    )
    try:
        Publisher(client, limits=LIMITS).publish_many("c", [message])
    except (InputError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def real_redis() -> Iterator[redis.Redis]:
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_http_the_script_and_the_publisher_agree(case: Case, real_redis: redis.Redis) -> None:
    fake = fakeredis.FakeRedis()
    verdicts = {
        "http": http_accepts(case),
        "script on fakeredis": script_accepts(fake, case),
        "script on redis-server": script_accepts(real_redis, case),
        "script with a ttl on fakeredis": script_accepts(fake, case, "ttl=60000"),
        "script with a ttl on redis-server": script_accepts(real_redis, case, "ttl=60000"),
        "publisher": publisher_accepts(real_redis, case),
    }
    expected = {k: case.ok for k, v in verdicts.items() if v is not None}
    assert {k: v for k, v in verdicts.items() if v is not None} == expected


def test_the_hubs_own_script_arguments_carry_the_limit() -> None:
    # What the hub and the publisher send the script: maxlen, the TTL, then the byte limit.
    args = script_args(10, [Payload("text", "hi")], 100, 60_000)
    assert [str(a) for a in args[:3]] == ["10", "ttl=60000", "100"]
