"""``/ui`` in a real browser: the figures move, the tail and the form work, a restart is survived.

Each test runs a hub process of its own and drives headless chromium with
playwright; streams that are not the page's are plain sockets, so the
channel list has counts to show.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import redis

from hub.publisher import Message, Publisher
from tests.support.procs import HubProcess, RedisServer, free_port, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.integration

# Where a run may also keep its screenshot (the one in docs/ was made so).
SCREENSHOT_ENV = "SSEHUB_SCREENSHOT"


class Watched:
    """A page, and everything that went wrong on it: console errors, failed requests."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response", lambda r: self.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None
        )


@contextlib.contextmanager
def opened(browser: Browser, url: str, query: str = "") -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    page = context.new_page()
    watched = Watched(page)
    page.goto(url + "/ui" + query)
    try:
        yield watched
    finally:
        context.close()


@contextlib.contextmanager
def subscribers(hub: HubProcess, channel: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` streams of ``channel`` as plain sockets, each subscribed (``: ok`` read)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
            socks.append(sock)
            sock.sendall(f"GET /channels/{channel}/stream HTTP/1.1\r\nHost: hub\r\n\r\n".encode())
            seen = b""
            while b": ok" not in seen:
                chunk = sock.recv(4096)
                assert chunk, "the stream ended before it was subscribed"
                seen += chunk
        yield socks
    finally:
        for sock in socks:
            sock.close()


def publish(hub: HubProcess, channel: str, data: object, event: str | None = None) -> str:
    body: dict[str, object] = {"data": data} if event is None else {"data": data, "event": event}
    r = httpx.post(f"{hub.url}/channels/{channel}/events", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_js(page: Page, expression: str, timeout: float = 10) -> None:
    """Until ``expression`` is true in the page. Polled from here: the page's CSP forbids the
    ``eval`` that playwright's own ``wait_for_function`` needs."""
    wait_until(lambda: bool(page.evaluate(expression)), timeout, expression)


def tail_ids(page: Page) -> list[str]:
    """The ids the tail shows, oldest first (the list shows the newest on top)."""
    ids: list[str] = page.eval_on_selector_all("#tail li[data-id]", "els => els.map(e => e.dataset.id)")
    return ids[::-1]


@pytest.fixture
def hub() -> Iterator[HubProcess]:
    # No HUB_CORS_ORIGINS: the page's publishes carry its own loopback origin, which may publish.
    node = HubProcess({"HUB_HEARTBEAT_SECONDS": "5"})
    node.start()
    yield node
    node.stop()


def test_the_page_shows_the_node_live_and_tails_and_publishes(browser: Browser, hub: HubProcess) -> None:
    with opened(browser, hub.url) as watched, subscribers(hub, "orders", 2):
        page = watched.page
        page.wait_for_selector('#node-state[data-state="live"]')
        # The channel list shows the two streams, then the page's own tail as a third.
        row = page.wait_for_selector('#channels tr[data-channel="orders"][data-subscribers="2"]')
        assert row is not None
        row.click()
        page.wait_for_selector('#channels tr[data-channel="orders"][data-subscribers="3"]')
        page.wait_for_selector('#tail-state[data-state="live"]')
        assert page.inner_text("#fig-streams") == "3"

        # The figures move when events are published, and the tail shows each of them.
        before = int(page.get_attribute("#tot-deliveries", "data-total") or 0)
        ids = [publish(hub, "orders", {"n": n}) for n in range(10)]
        wait_js(page, f"Number(document.querySelector('#tot-deliveries').dataset.total) >= {before + 30}")
        wait_js(page, "Number(document.querySelector('#fig-events').textContent) > 0")
        wait_js(page, "document.querySelectorAll('#tail li[data-id]').length === 10")
        assert tail_ids(page) == ids

        # Publishing from the form: the event is in the tail within a second, with its id and type.
        page.fill("#pub-event", "greeting")
        page.fill("#pub-data", '{"hello": "world"}')
        page.click("#publish-form button[type=submit]")
        shown = page.wait_for_selector('#tail li[data-type="greeting"]', timeout=1000)
        assert shown is not None
        result = page.wait_for_selector("#publish-result[data-id]", timeout=1000)
        assert result is not None
        assert shown.get_attribute("data-id") == result.get_attribute("data-id")
        assert shown.inner_text().split(maxsplit=2)[2] == '{"hello":"world"}'

        # Paused, the tail holds events back; resumed, it shows them in order.
        page.click("#tail-pause")
        held = [publish(hub, "orders", n) for n in range(3)]
        wait_js(page, "document.querySelector('#tail-pause').textContent === 'resume (3)'")
        assert len(tail_ids(page)) == 11
        page.click("#tail-pause")
        assert tail_ids(page)[-3:] == held

        assert watched.problems == []


def test_the_tail_comes_back_by_itself_after_a_restart_and_misses_nothing(
    browser: Browser, redis_server: RedisServer
) -> None:
    port = free_port()
    env = {"HUB_REDIS_URL": redis_server.url, "HUB_RETRY_MS": "300", "HUB_HEARTBEAT_SECONDS": "1"}
    node = HubProcess(env, port=port)
    node.start()
    try:
        with opened(browser, node.url) as watched:
            page = watched.page
            page.fill("#open-channel", "restart")
            page.click("#open-form button[type=submit]")
            page.wait_for_selector('#channels tr[data-channel="restart"][data-subscribers="1"]')
            ids = [publish(node, "restart", n) for n in range(3)]
            wait_js(page, "document.querySelectorAll('#tail li[data-id]').length === 3")

            node.stop()
            page.wait_for_selector('#tail-state[data-state="reconnecting"]')
            # Published while the node is down: straight into Redis, as other nodes would.
            producer = Publisher(redis.Redis.from_url(redis_server.url), prefix="hub", history_size=1000)
            ids += producer.publish_many("restart", [Message({"down": n}) for n in range(4)])

            node.start()
            page.wait_for_selector('#tail-state[data-state="live"]', timeout=15000)
            ids += [publish(node, "restart", {"after": n}) for n in range(2)]
            wait_js(page, "document.querySelectorAll('#tail li[data-id]').length >= 9")
            wait_until(lambda: len(tail_ids(page)) >= 9, 5, "the tail to settle")
            assert tail_ids(page) == ids  # each once, in order
            assert page.query_selector('#tail li[data-type="hub.gap"]') is None
    finally:
        node.stop()


def test_a_screenshot_under_a_little_load(browser: Browser, hub: HubProcess, tmp_path: Path) -> None:
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=hub.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                for channel, event in (("orders", "order"), ("prices", None), ("chat.lobby", "message")):
                    body: dict[str, object] = {"data": {"n": n, "channel": channel}}
                    if event is not None and event != "message":
                        body["event"] = event
                    client.post(f"/channels/{channel}/events", json=body)
                n += 1
                stop.wait(0.02)

    with (
        opened(browser, hub.url) as watched,
        subscribers(hub, "orders", 3),
        subscribers(hub, "prices", 5),
        subscribers(hub, "chat.lobby", 2),
    ):
        page = watched.page
        page.wait_for_selector('#channels tr[data-channel="prices"][data-subscribers="5"]')
        page.fill("#tail-types", "order")
        page.dispatch_event("#tail-types", "change")
        page.click('#channels tr[data-channel="orders"]')
        page.fill("#pub-channel", "orders")
        page.fill("#pub-event", "order")
        publisher = threading.Thread(target=load, daemon=True)
        publisher.start()
        try:
            started = time.monotonic()
            wait_js(page, "Number(document.querySelector('#sparkline').dataset.max) > 10")
            wait_js(page, "document.querySelectorAll('#tail li[data-type=\"order\"]').length > 20")
            wait_until(lambda: time.monotonic() - started > 4, 10, "a few seconds of load")
            path = tmp_path / "dashboard.png"
            page.screenshot(path=str(path), full_page=True)
        finally:
            stop.set()
            publisher.join(10)
    assert path.stat().st_size > 10_000
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copyfile(path, keep)


def test_with_credentials_the_page_works_with_a_token_in_its_address(browser: Browser) -> None:
    """A hub with a publish token and private channels: /ui?access_token=T reads the figures,
    tails a private channel and publishes, all with T; without it the figures are refused."""
    from hub.tokens import mint

    secret = "ui-test-secret-" + "s" * 24
    node = HubProcess(
        {
            "HUB_PUBLISH_TOKENS": "ui-admin-token-123",
            "HUB_JWT_SECRET": secret,
            "HUB_PRIVATE_CHANNELS": "user-*",
        }
    )
    node.start()
    try:
        admin = mint(secret, subscribe=["*"], publish=["*"], admin=True, ttl=600)
        with opened(browser, node.url, f"?access_token={admin}") as watched:
            page = watched.page
            page.wait_for_selector('#node-state[data-state="live"]')
            # A private channel, tailed and published to with the page's token.
            page.fill("#open-channel", "user-7")
            page.click("#open-form button[type=submit]")
            page.wait_for_selector('#tail-state[data-state="live"]')
            page.fill("#pub-data", '{"secret": 1}')
            page.click("#publish-form button[type=submit]")
            shown = page.wait_for_selector("#tail li[data-id]", timeout=2000)
            assert shown is not None
            assert watched.problems == []
        with opened(browser, node.url) as watched:
            page = watched.page
            # Without the token the figures are refused (401): the page never goes live.
            page.wait_for_selector('#node-state[data-state="reconnecting"]')
            assert page.get_attribute("#node-state", "data-state") != "live"
        r = httpx.get(f"{node.url}/_hub/stats", timeout=5)
        assert r.status_code == 401
        assert admin not in node.log()  # the page's token never reaches the hub's log
    finally:
        node.stop()


def test_publishing_to_a_channel_not_tailed_tails_it_from_that_event(
    browser: Browser, hub: HubProcess
) -> None:
    with opened(browser, hub.url) as watched:
        page = watched.page
        page.wait_for_selector('#node-state[data-state="live"]')
        page.fill("#pub-channel", "fresh-channel")
        page.fill("#pub-data", '{"first": true}')
        page.click("#publish-form button[type=submit]")
        result = page.wait_for_selector("#publish-result[data-id]", timeout=2000)
        assert result is not None
        shown = page.wait_for_selector("#tail li[data-id]", timeout=2000)
        assert shown is not None
        # The very event just published, though the tail opened after it was stored.
        assert shown.get_attribute("data-id") == result.get_attribute("data-id")
        assert page.inner_text("#tail-channel") == "fresh-channel"
        assert watched.problems == []
