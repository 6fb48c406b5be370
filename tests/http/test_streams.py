"""End to end against a real uvicorn: streams, replay, heartbeats."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest

from hub.core.ids import parse_id
from tests.support.client import Stream, client, open_stream, publish
from tests.support.procs import HubProcess

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def fresh() -> str:
    return "t-" + uuid.uuid4().hex[:12]


async def test_stream_headers_and_first_bytes_before_any_event(hub_server: HubProcess) -> None:
    async with client() as http, open_stream(http, f"{hub_server.url}/channels/{fresh()}/stream") as s:
        headers = s.response.headers
        assert s.response.status_code == 200
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert "connection" not in headers  # illegal on HTTP/2, some browsers drop such streams
        # The first bytes: a retry and a comment, and no blank line (no empty event).
        assert bytes(s.raw) == b"retry: 3000\n: ok\n"
        assert s.events == []


async def test_hundred_subscribers_get_two_hundred_events_in_order(hub_server: HubProcess) -> None:
    channel = fresh()
    url = f"{hub_server.url}/channels/{channel}/stream"
    async with client() as http:
        streams: list[Stream] = []
        contexts = [open_stream(http, url) for _ in range(100)]
        for ctx in contexts:
            streams.append(await ctx.__aenter__())
        try:
            ids = []
            for i in range(200):
                ids.append(await publish(http, hub_server.url, channel, {"n": i}))
            results = await asyncio.gather(*(s.wait_for(200, timeout=30) for s in streams))
            for events in results:
                assert [orjson.loads(e.data)["n"] for e in events] == list(range(200))
                assert [e.id for e in events] == ids
            keys = [parse_id(i) or (0, 0) for i in ids]
            assert keys == sorted(set(keys))
            assert len(keys) == 200
        finally:
            for ctx in contexts:
                await ctx.__aexit__(None, None, None)


async def test_idle_stream_gets_heartbeat_comments(hub_server: HubProcess) -> None:
    # hub_server runs with HUB_HEARTBEAT_SECONDS=0.4
    async with client() as http, open_stream(http, f"{hub_server.url}/channels/{fresh()}/stream") as s:
        await s.wait_bytes(b": ok\n:\n", timeout=5)
        assert s.comments[-1] == ""
        assert s.events == []  # heartbeats never surface as events


async def test_resume_by_header_and_by_query_header_winning(hub_server: HubProcess) -> None:
    channel = fresh()
    base = f"{hub_server.url}/channels/{channel}/stream"
    async with client() as http:
        ids = [await publish(http, hub_server.url, channel, i) for i in range(6)]
        async with open_stream(http, base, {"Last-Event-ID": ids[2]}) as s:
            assert [e.data for e in await s.wait_for(3)] == ["3", "4", "5"]
        async with open_stream(http, f"{base}?last_event_id={ids[4]}") as s:
            assert [e.data for e in await s.wait_for(1)] == ["5"]
        async with open_stream(http, f"{base}?last_event_id={ids[0]}", {"Last-Event-ID": ids[3]}) as s:
            await s.wait_for(2)
            await publish(http, hub_server.url, channel, 6)
            assert [e.data for e in await s.wait_for(3)] == ["4", "5", "6"]


async def test_replay_then_live_has_no_gap_or_duplicate_under_concurrent_publishing(
    hub_server: HubProcess,
) -> None:
    channel = fresh()
    async with client() as http:
        first = [await publish(http, hub_server.url, channel, i) for i in range(10)]

        async def publisher() -> None:
            for i in range(10, 40):
                await publish(http, hub_server.url, channel, i)

        task = asyncio.create_task(publisher())
        async with open_stream(
            http, f"{hub_server.url}/channels/{channel}/stream", {"Last-Event-ID": first[4]}
        ) as s:
            await task
            events = await s.wait_for(35)
            assert [int(e.data) for e in events] == list(range(5, 40))


async def test_gap_for_too_old_and_malformed_ids(hub_server: HubProcess) -> None:
    channel = fresh()  # hub_server keeps 50 events per channel
    async with client() as http:
        ids = [await publish(http, hub_server.url, channel, i) for i in range(60)]
        url = f"{hub_server.url}/channels/{channel}/stream"
        async with open_stream(http, url, {"Last-Event-ID": ids[2]}) as s:
            events = await s.wait_for(51)
            assert events[0].type == "hub.gap"
            assert events[0].id == ""
            assert orjson.loads(events[0].data) == {
                "channel": channel,
                "requested": ids[2],
                "oldest": ids[10],
            }
            assert [int(e.data) for e in events[1:]] == list(range(10, 60))
        async with open_stream(http, url, {"Last-Event-ID": "not-an-id"}) as s:
            events = await s.wait_for(51)
            assert events[0].type == "hub.gap"
            assert orjson.loads(events[0].data)["requested"] == "not-an-id"
            assert events[1].id == ids[10]


async def test_multi_channel_resume_while_both_channels_advanced(hub_server: HubProcess) -> None:
    a, b = fresh(), fresh()
    url = f"{hub_server.url}/stream?channel={a}&channel={b}"
    async with client() as http:
        async with open_stream(http, url) as s:
            await publish(http, hub_server.url, a, "a1")
            await publish(http, hub_server.url, b, "b1", event="note")
            events = await s.wait_for(2)
            assert orjson.loads(events[0].data) == {"channel": a, "data": "a1"}
            assert events[1].type == "note"
            cursor = events[1].id
            assert ":" not in cursor
            assert len(cursor) < 64
        for i in range(2, 5):
            await publish(http, hub_server.url, a, f"a{i}")
            await publish(http, hub_server.url, b, f"b{i}")
        async with open_stream(http, url, {"Last-Event-ID": cursor}) as s:
            events = await s.wait_for(6)
            got = [orjson.loads(e.data) for e in events]
            assert [m["data"] for m in got if m["channel"] == a] == ["a2", "a3", "a4"]
            assert [m["data"] for m in got if m["channel"] == b] == ["b2", "b3", "b4"]
            # The last cursor resumes both channels exactly: nothing more to replay.
            last = events[-1].id
        async with open_stream(http, url, {"Last-Event-ID": last}) as s:
            await publish(http, hub_server.url, b, "b5")
            (event,) = await s.wait_for(1)
            assert orjson.loads(event.data) == {"channel": b, "data": "b5"}


async def test_text_event_comes_back_exactly(hub_server: HubProcess) -> None:
    channel = fresh()
    async with client() as http, open_stream(http, f"{hub_server.url}/channels/{channel}/stream") as s:
        text = "first line\r\nsecond\rthird\n  indented \u2028 emoji \U0001f600\n"
        r = await http.post(
            f"{hub_server.url}/channels/{channel}/events?event=log",
            content=text.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        assert r.status_code == 202
        (event,) = await s.wait_for(1)
        assert event.type == "log"
        assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


async def test_batch_publish_is_one_request_many_events(hub_server: HubProcess) -> None:
    channel = fresh()
    async with client() as http, open_stream(http, f"{hub_server.url}/channels/{channel}/stream") as s:
        r = await http.post(
            f"{hub_server.url}/channels/{channel}/events",
            json=[{"data": i, "event": "tick"} for i in range(5)] + [{"data": None, "retry": 1500}],
        )
        assert r.status_code == 202
        ids = r.json()["ids"]
        events = await s.wait_for(6)
        assert [e.id for e in events] == ids
        assert [e.data for e in events] == ["0", "1", "2", "3", "4", "null"]
        assert events[-1].retry == 1500


async def test_channel_listing_counts_subscribers_and_history(hub_server: HubProcess) -> None:
    channel = fresh()
    async with client() as http, open_stream(http, f"{hub_server.url}/channels/{channel}/stream"):
        last = await publish(http, hub_server.url, channel, 1)
        found = await http.get(f"{hub_server.url}/channels", params={"prefix": channel})
        listing = found.json()["channels"]
        (entry,) = [c for c in listing if c["channel"] == channel]
        assert entry == {"channel": channel, "subscribers": 1, "last_id": last, "buffered": 1}


def test_health_endpoints(hub_server: HubProcess) -> None:
    assert httpx.get(f"{hub_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{hub_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["broker"] == "memory"
