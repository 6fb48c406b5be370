"""``GET /channels`` a page at a time: ``?limit=``, ``?cursor=``, ``?prefix=`` (issue #11)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.event import Payload
from hub.core.hub import Hub
from hub.core.subscriber import Subscriber
from hub.http.app import HubApp
from tests.core.helpers import RecordingSink
from tests.http.conftest import http

pytestmark = pytest.mark.anyio

ONE = [Payload("json", "1")]


def hub(app: HubApp) -> Hub:
    assert app.hub is not None
    return app.hub


def broker(app: HubApp) -> MemoryBroker:
    memory = hub(app).broker
    assert isinstance(memory, MemoryBroker)
    return memory


async def with_history(app: HubApp, names: list[str]) -> None:
    """Channels with one kept event each, through the broker (not HTTP: it is quicker)."""
    for name in names:
        await broker(app).publish(name, ONE)


async def with_subscriber(app: HubApp, names: list[str]) -> list[Subscriber]:
    """A live stream of each channel (and no history: the memory broker keeps none for them)."""
    subs = [Subscriber([name], RecordingSink()) for name in names]
    for sub in subs:
        await hub(app).attach(sub, [None])
    return subs


async def listing(client: httpx.AsyncClient, **params: str | int) -> dict[str, Any]:
    r = await client.get("/channels", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"channels", "next"}
    return body


def names_of(page: dict[str, Any]) -> list[str]:
    return [c["channel"] for c in page["channels"]]


async def walk(client: httpx.AsyncClient, **params: str | int) -> list[list[str]]:
    """Every page, following ``next`` until it is null."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await listing(client, **params, **({"cursor": cursor} if cursor is not None else {}))
        pages.append(names_of(page))
        cursor = page["next"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str)
        assert len(pages) < 1000, "next never became null"


async def test_default_page_is_100_channels_in_name_order(app: HubApp) -> None:
    names = [f"c{i:03d}" for i in range(250)]
    await with_history(app, names[::-1])  # published out of order
    async with http(app) as client:
        first = await listing(client)
        assert names_of(first) == names[:100]
        assert first["next"] is not None
        second = await listing(client, cursor=first["next"])
        assert names_of(second) == names[100:200]
        third = await listing(client, cursor=second["next"])
        assert names_of(third) == names[200:]
        assert third["next"] is None


async def test_a_short_listing_is_one_page_with_next_null(app: HubApp) -> None:
    await with_history(app, ["b", "a"])
    async with http(app) as client:
        page = await listing(client)
    assert page == {
        "channels": [
            {"channel": "a", "subscribers": 0, "last_id": page["channels"][0]["last_id"], "buffered": 1},
            {"channel": "b", "subscribers": 0, "last_id": page["channels"][1]["last_id"], "buffered": 1},
        ],
        "next": None,
    }
    assert all(isinstance(c["last_id"], str) for c in page["channels"])


async def test_a_page_exactly_as_long_as_what_is_left_ends_the_listing(app: HubApp) -> None:
    await with_history(app, ["a", "b", "c", "d"])
    async with http(app) as client:
        first = await listing(client, limit=2)
        last = await listing(client, limit=2, cursor=first["next"])
    assert (names_of(first), names_of(last)) == (["a", "b"], ["c", "d"])
    assert last["next"] is None  # not a further, empty page


@pytest.mark.parametrize("limit", [1, 7, 1000])
async def test_pages_walk_every_channel_exactly_once_in_order(app: HubApp, limit: int) -> None:
    names = sorted(f"{p}{i}" for p in ("a", "B", "z-", "m.", "0:") for i in range(23))
    await with_history(app, names[::2])
    await with_subscriber(app, names[1::2])  # the other half has only subscribers
    async with http(app) as client:
        pages = await walk(client, limit=limit)
    assert [name for page in pages for name in page] == names
    assert all(1 <= len(page) <= limit for page in pages)
    assert len(pages) == -(-len(names) // limit)


async def test_limit_max_is_1000(app: HubApp) -> None:
    names = [f"c{i:04d}" for i in range(1001)]
    await with_history(app, names)
    async with http(app) as client:
        page = await listing(client, limit=1000)
        rest = await listing(client, limit=1000, cursor=page["next"])
    assert names_of(page) == names[:1000]
    assert page["next"] is not None
    assert names_of(rest) == ["c1000"]
    assert rest["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=",
        "limit=-1",
        "limit=1.5",
        "limit=%2B5",  # +5
        "limit=%205",  # " 5"
        "limit=99999999999999999999",
        "limit=10&limit=20",
    ],
)
async def test_a_bad_limit_is_a_400(app: HubApp, query: str) -> None:
    await with_history(app, ["a"])
    async with http(app) as client:
        r = await client.get(f"/channels?{query}")
        head = await client.head(f"/channels?{query}")
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "bad_request"
    assert "limit" in body["detail"]
    assert (head.status_code, head.content) == (400, b"")


async def test_cursor_past_the_end_is_an_empty_last_page(app: HubApp) -> None:
    await with_history(app, ["a", "b"])
    async with http(app) as client:
        assert await listing(client, cursor="b") == {"channels": [], "next": None}
        assert await listing(client, cursor="zzz") == {"channels": [], "next": None}
        # a cursor between names starts after it, whether or not that name exists
        assert names_of(await listing(client, cursor="a0")) == ["b"]


@pytest.mark.parametrize(
    "cursor",
    ["", "bad name", "a/b", "é", "x" * 129, "a%00", "a\x00", "a\n"],
)
async def test_a_malformed_cursor_is_a_400(app: HubApp, cursor: str) -> None:
    await with_history(app, ["a"])
    async with http(app) as client:
        r = await client.get("/channels", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert "cursor" in r.json()["detail"]


async def test_prefix_lists_only_the_channels_starting_with_it(app: HubApp) -> None:
    orders = [f"orders.{i:02d}" for i in range(12)]
    await with_history(app, ["order", "orders", "ordersx", "news", "orders-eu", "Orders.1", *orders])
    async with http(app) as client:
        only = await listing(client, prefix="orders.")
        assert names_of(only) == orders
        assert only["next"] is None
        pages = await walk(client, prefix="orders.", limit=5)
        assert pages == [orders[:5], orders[5:10], orders[10:]]
        assert names_of(await listing(client, prefix="orders")) == [
            "orders",
            "orders-eu",
            *orders,
            "ordersx",
        ]
        assert names_of(await listing(client, prefix="nothing")) == []
        # a cursor before the prefix's names changes nothing; one after them ends the listing
        assert names_of(await listing(client, prefix="orders.", cursor="a")) == orders
        assert await listing(client, prefix="orders.", cursor="p") == {"channels": [], "next": None}


@pytest.mark.parametrize("prefix", ["bad name", "a/b", "é", "x" * 129, "a&b"])
async def test_a_bad_prefix_is_a_400(app: HubApp, prefix: str) -> None:
    await with_history(app, ["a"])
    async with http(app) as client:
        r = await client.get("/channels", params={"prefix": prefix})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert "prefix" in r.json()["detail"]


async def test_a_prefix_of_128_characters_is_fine(app: HubApp) -> None:
    name = "p" * 128
    await with_history(app, [name, "p"])
    async with http(app) as client:
        assert names_of(await listing(client, prefix=name)) == [name]


async def test_channels_with_only_subscribers_or_only_history_are_both_listed(app: HubApp) -> None:
    await with_history(app, ["b-history"])
    await with_subscriber(app, ["a-stream"])  # nobody published to it
    async with http(app) as client:
        page = await listing(client, limit=1)
        rest = await listing(client, limit=1, cursor=page["next"])
    assert page["channels"] == [{"channel": "a-stream", "subscribers": 1, "last_id": None, "buffered": 0}]
    assert page["next"] is not None
    (entry,) = rest["channels"]
    assert entry["channel"] == "b-history"
    assert (entry["subscribers"], entry["buffered"]) == (0, 1)
    assert isinstance(entry["last_id"], str)
    assert rest["next"] is None


async def test_a_channel_with_both_is_listed_once(app: HubApp) -> None:
    await with_history(app, ["both", "x"])
    await with_subscriber(app, ["both", "both"])
    async with http(app) as client:
        whole = await listing(client)
        pages = await walk(client, limit=1)
        (both,) = (await listing(client, prefix="both"))["channels"]
    assert names_of(whole) == ["both", "x"]
    assert pages == [["both"], ["x"]]
    assert (both["subscribers"], both["buffered"]) == (2, 1)


async def test_head_answers_like_get_for_a_page(app: HubApp) -> None:
    await with_history(app, ["a", "b", "c"])
    async with http(app) as client:
        get = await client.get("/channels?limit=2&prefix=&cursor=a")
        head = await client.head("/channels?limit=2&prefix=&cursor=a")
    assert get.json() == {"channels": get.json()["channels"], "next": None}
    assert names_of(get.json()) == ["b", "c"]
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
