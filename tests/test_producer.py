"""hub.producer: publishing against a real hub, and its retries against httpx.MockTransport
(with a fake clock, so backoff costs no time)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hub.producer import AsyncHubClient, Event, HubClient, PublishError
from tests.support.client import client, open_stream
from tests.support.procs import HubProcess

ID = re.compile(r"\d+-\d+")
Handler = Callable[[httpx.Request], httpx.Response]


def channel() -> str:
    return f"prod-{uuid.uuid4().hex[:10]}"


def accepted(event_id: str = "1-0") -> httpx.Response:
    return httpx.Response(202, json={"channel": "c", "id": event_id})


def refused(status: int, error: str, detail: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"error": error, "detail": detail}, headers=headers)


class Script:
    """A MockTransport handler answering from a list, recording requests; and a fake clock."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def clock(self) -> float:
        return self.now

    def sync(self, **kwargs: Any) -> HubClient:
        return HubClient(
            "http://hub.test",
            transport=httpx.MockTransport(self),
            sleep=self.sleep,
            clock=self.clock,
            **kwargs,
        )

    def asynchronous(self, **kwargs: Any) -> AsyncHubClient:
        return AsyncHubClient(
            "http://hub.test",
            transport=httpx.MockTransport(self),
            sleep=self.asleep,
            clock=self.clock,
            **kwargs,
        )


@pytest.fixture
def hub_url(hub_server: HubProcess) -> str:
    return hub_server.url


# -- against a real hub --------------------------------------------------------------------------


def test_publish_publish_many_and_text_reach_a_real_hub(hub_url: str) -> None:
    name = channel()
    with HubClient(hub_url) as hub:
        first = hub.publish(name, {"id": 42}, event="order", retry=2000)
        many = hub.publish_many(name, [{"id": 43}, Event({"id": 44}, event="special")], event="order")
        text = hub.publish_text(name, "a line", event="log")
    assert all(ID.fullmatch(i) for i in [first, *many, text])
    assert len({first, *many, text}) == 4


@pytest.mark.anyio
async def test_a_subscriber_sees_what_the_async_client_published(hub_url: str) -> None:
    name = channel()
    async with (
        client() as http,
        AsyncHubClient(hub_url) as hub,
        open_stream(http, f"{hub_url}/channels/{name}/stream") as stream,
    ):
        first = await hub.publish(name, {"id": 1}, event="order")
        ids = await hub.publish_many(name, [{"id": 2}, {"id": 3}])
        text = await hub.publish_text(name, "plain words")
        events = await stream.wait_for(4)
    assert [e.id for e in events] == [first, *ids, text]
    assert [json.loads(e.data) for e in events[:3]] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert events[0].type == "order"
    assert events[3].data == "plain words"


@pytest.mark.anyio
async def test_lingering_publishes_reach_a_real_hub_with_their_own_ids(hub_url: str) -> None:
    name = channel()
    async with (
        client() as http,
        AsyncHubClient(hub_url, linger=0.02) as hub,
        open_stream(http, f"{hub_url}/channels/{name}/stream") as stream,
    ):
        ids = await asyncio.gather(*(hub.publish(name, {"n": n}) for n in range(20)))
        events = await stream.wait_for(20)
    assert [e.id for e in events] == ids
    assert [json.loads(e.data)["n"] for e in events] == list(range(20))


def test_a_bad_request_to_a_real_hub_raises_the_hubs_detail(hub_url: str) -> None:
    with HubClient(hub_url) as hub, pytest.raises(PublishError) as caught:
        hub.publish(channel(), 1, event="hub.reserved")
    assert caught.value.status == 400
    assert caught.value.error == "bad_event_type"
    assert "reserved" in caught.value.detail
    assert caught.value.attempts == 1


# -- requests ------------------------------------------------------------------------------------


def test_requests_carry_the_token_and_the_right_bodies() -> None:
    script = Script(httpx.Response(202, json={"channel": "c", "ids": ["1-0", "1-1"]}))
    with script.sync(token="s3cret") as hub:
        assert hub.publish_many("orders", [{"id": 43}, Event(44, event="x", retry=5)], event="order") == [
            "1-0",
            "1-1",
        ]
    request = script.requests[0]
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.url.path == "/channels/orders/events"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == [
        {"data": {"id": 43}, "event": "order"},
        {"data": 44, "event": "x", "retry": 5},
    ]


def test_text_goes_as_text_plain_with_query_parameters() -> None:
    script = Script(accepted("7-0"))
    with script.sync() as hub:
        assert hub.publish_text("logs", "a line é", event="log", retry=100) == "7-0"
    request = script.requests[0]
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"].startswith("text/plain")
    assert request.content == "a line é".encode()
    assert dict(request.url.params) == {"event": "log", "retry": "100"}


def test_batches_out_of_range_and_nan_are_refused_before_sending() -> None:
    script = Script(accepted())
    with script.sync() as hub:
        with pytest.raises(ValueError, match="1 to 1000"):
            hub.publish_many("c", [])
        with pytest.raises(ValueError, match="1 to 1000"):
            hub.publish_many("c", range(1001))
        with pytest.raises(ValueError, match="JSON compliant"):
            hub.publish("c", float("nan"))
    assert script.requests == []


# -- retries -------------------------------------------------------------------------------------


def test_503_with_retry_after_is_honoured_then_succeeds() -> None:
    script = Script(refused(503, "unavailable", "broker down", retry_after="2"), accepted("5-0"))
    with script.sync() as hub:
        assert hub.publish("c", 1) == "5-0"
    assert len(script.requests) == 2
    assert len(script.pauses) == 1
    assert 2.0 <= script.pauses[0] <= 2.2


def test_429_is_retried_with_growing_backoff() -> None:
    script = Script(*[refused(429, "too_many", "slow down")] * 4, accepted("9-0"))
    with script.sync() as hub:
        assert hub.publish("c", 1) == "9-0"
    assert len(script.requests) == 5
    assert script.pauses[-1] > script.pauses[0]
    assert all(0 < p <= 5 for p in script.pauses)


def test_connection_errors_and_timeouts_are_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), accepted("3-0"))
    with script.sync() as hub:
        assert hub.publish("c", 1) == "3-0"
    assert len(script.requests) == 3
    # Every attempt of one publish carries the same key: a lost reply's retry is not stored twice.
    keys = {request.headers["Idempotency-Key"] for request in script.requests}
    assert len(keys) == 1
    with script.sync() as hub:
        hub.publish("c", 2)
    assert script.requests[-1].headers["Idempotency-Key"] not in keys


def test_gives_up_after_max_wait_with_the_last_problem() -> None:
    script = Script(refused(503, "unavailable", "the broker is unavailable", retry_after="1"))
    with script.sync(max_wait=5) as hub, pytest.raises(PublishError) as caught:
        hub.publish("c", 1)
    error = caught.value
    assert (error.status, error.error, error.detail) == (503, "unavailable", "the broker is unavailable")
    assert error.attempts == len(script.requests) > 2
    assert script.now <= 5
    assert "gave up after" in str(error)


def test_an_unreachable_hub_gives_up_with_status_none() -> None:
    script = Script(httpx.ConnectError("connection refused"))
    with script.sync(max_wait=1) as hub, pytest.raises(PublishError) as caught:
        hub.publish("c", 1)
    assert caught.value.status is None
    assert caught.value.error == "unreachable"
    assert "connection refused" in caught.value.detail


def test_a_retry_after_longer_than_max_wait_gives_up_at_once() -> None:
    script = Script(refused(429, "too_many", "later", retry_after="120"))
    with script.sync(max_wait=30) as hub, pytest.raises(PublishError):
        hub.publish("c", 1)
    assert len(script.requests) == 1
    assert script.now == 0


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_other_errors_raise_at_once_with_the_hubs_detail(status: int) -> None:
    script = Script(refused(status, "bad_request", f"detail {status}"), accepted())
    with script.sync() as hub, pytest.raises(PublishError) as caught:
        hub.publish("c", 1)
    assert (caught.value.status, caught.value.error, caught.value.detail) == (
        status,
        "bad_request",
        f"detail {status}",
    )
    assert len(script.requests) == 1


def test_an_error_without_a_json_body_still_says_what_came() -> None:
    script = Script(httpx.Response(502, text="<html>Bad Gateway</html>"), httpx.Response(403, text="nope"))
    with script.sync() as hub, pytest.raises(PublishError) as caught:
        hub.publish("c", 1)
    assert (caught.value.status, caught.value.error, caught.value.detail) == (403, "http_403", "nope")
    assert len(script.requests) == 2


# -- asyncio -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_retries_and_token() -> None:
    script = Script(
        httpx.ConnectError("refused"), refused(503, "unavailable", "down", retry_after="1"), accepted("4-0")
    )
    async with script.asynchronous(token="t") as hub:
        assert await hub.publish("c", {"a": 1}) == "4-0"
    assert len(script.requests) == 3
    assert all(r.headers["Authorization"] == "Bearer t" for r in script.requests)
    assert script.pauses[1] >= 1.0


@pytest.mark.anyio
async def test_async_gives_up_and_400_raises_at_once() -> None:
    script = Script(refused(429, "too_many", "slow"))
    async with script.asynchronous(max_wait=2) as hub:
        with pytest.raises(PublishError) as caught:
            await hub.publish_text("c", "x")
    assert caught.value.status == 429
    assert caught.value.attempts > 1
    script = Script(refused(400, "bad_retry", "retry is an integer"))
    async with script.asynchronous() as hub:
        with pytest.raises(PublishError, match="retry is an integer"):
            await hub.publish_many("c", [1, 2])
    assert len(script.requests) == 1


# -- batching (linger) ---------------------------------------------------------------------------


def batch_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    items = body if isinstance(body, list) else [body]
    if any(item.get("event") == "bad" for item in items):
        return refused(400, "bad_event_type", "bad is bad")
    if not isinstance(body, list):
        return accepted("one-0")
    return httpx.Response(202, json={"channel": "c", "ids": [f"{len(items)}-{i}" for i in range(len(items))]})


@pytest.mark.anyio
async def test_publishes_close_together_share_one_request_per_channel() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return batch_answer(request)

    async with AsyncHubClient("http://hub.test", linger=0.05, transport=httpx.MockTransport(handler)) as hub:
        results = await asyncio.gather(
            *(hub.publish("a", {"n": n}) for n in range(5)), hub.publish("b", "other", event="e")
        )
    assert results == ["5-0", "5-1", "5-2", "5-3", "5-4", "1-0"]
    assert sorted(r.url.path for r in requests) == ["/channels/a/events", "/channels/b/events"]
    by_path = {r.url.path: json.loads(r.content) for r in requests}
    assert by_path["/channels/a/events"] == [{"data": {"n": n}} for n in range(5)]
    assert by_path["/channels/b/events"] == [{"data": "other", "event": "e"}]


@pytest.mark.anyio
async def test_a_refused_batch_is_sent_one_by_one_so_only_the_bad_event_fails() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return batch_answer(request)

    async with AsyncHubClient("http://hub.test", linger=0.05, transport=httpx.MockTransport(handler)) as hub:
        results = await asyncio.gather(
            hub.publish("a", 1), hub.publish("a", 2, event="bad"), hub.publish("a", 3), return_exceptions=True
        )
    assert results[0] == "one-0"
    assert isinstance(results[1], PublishError)
    assert results[1].detail == "bad is bad"
    assert results[2] == "one-0"
    assert len(requests) == 4


@pytest.mark.anyio
async def test_a_batch_that_fails_for_good_fails_every_caller() -> None:
    script = Script(refused(503, "unavailable", "down"))
    async with script.asynchronous(linger=0.01, max_wait=1) as hub:
        results = await asyncio.gather(*(hub.publish("a", n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, PublishError) and r.status == 503 for r in results)


@pytest.mark.anyio
async def test_aclose_sends_what_is_waiting() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return batch_answer(request)

    hub = AsyncHubClient("http://hub.test", linger=60, transport=httpx.MockTransport(handler))
    pending = [asyncio.ensure_future(hub.publish("a", n)) for n in range(3)]
    await asyncio.sleep(0)  # let them join the batch
    await asyncio.wait_for(hub.aclose(), 5)
    assert await asyncio.gather(*pending) == ["3-0", "3-1", "3-2"]
    assert len(requests) == 1
    with pytest.raises(RuntimeError, match="closed"):
        await hub.publish("a", 4)


def test_the_producer_libraries_load_none_of_the_servers_dependencies() -> None:
    """A producer service installs httpx (or redis and orjson), not FastAPI, uvicorn, pydantic..."""
    import subprocess
    import sys

    code = "import sys, hub.producer, hub.publisher; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    server_only = {
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
        "pydantic_settings",
        "jwt",
        "prometheus_client",
    }
    assert not loaded & server_only, loaded & server_only
    assert {"httpx", "redis"} <= loaded
