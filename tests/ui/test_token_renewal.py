"""The README's browser example for private channels, run in chromium as written: on
``hub.expired`` it fetches a new token and resumes where it was, losing nothing."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from hub.tokens import mint
from tests.support.procs import HubProcess, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
TOKEN = "renewal-publish-token-01"
SECRET = "renewal-jwt-secret-" + "r" * 20


def snippet() -> str:
    text = README.read_text()
    found = re.compile(r"^```javascript\n(.*?)^```$", re.M | re.S).search(
        text, text.index("**In a browser.**")
    )
    assert found is not None
    return found.group(1)


@pytest.fixture
def hub() -> Iterator[HubProcess]:
    node = HubProcess(
        {"HUB_PUBLISH_TOKENS": TOKEN, "HUB_JWT_SECRET": SECRET, "HUB_PRIVATE_CHANNELS": "user-*"}
    )
    node.start()
    yield node
    node.stop()


def subscribers(hub: HubProcess, name: str) -> int:
    answer = httpx.get(
        f"{hub.url}/channels",
        params={"prefix": name},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).json()
    return sum(c["subscribers"] for c in answer["channels"] if c["channel"] == name)


def test_the_page_renews_its_token_at_each_expiry_and_misses_nothing(
    browser: Browser, hub: HubProcess
) -> None:
    page_html = (
        "<!doctype html><meta charset=utf-8><script>"
        "const seen = []; function show(data) { seen.push(data); }\n"
        + snippet().replace("https://hub.example", hub.url)
        + "</script>"
    )
    minted: list[str] = []

    class App(BaseHTTPRequestHandler):
        """The app's own server: its page, and the token endpoint its backend would have."""

        def do_GET(self) -> None:
            if self.path == "/my-app/hub-token":
                minted.append(mint(SECRET, subscribe=["user-42"], ttl=1))  # short-lived: renewed often
                body, kind = minted[-1].encode(), "text/plain"
            else:
                body, kind = page_html.encode(), "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    # On loopback like the hub: Chromium keeps a public page from reaching a loopback address.
    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_until(lambda: subscribers(hub, "user-42") == 1, 10, "the page's stream")
        sent: list[str] = []
        # One event at a time, each shown before the next, across two renewals (a token lives
        # 1 s plus the hub's 5 s leeway): events published while the page renews come after.
        while len(minted) < 3:
            r = httpx.post(
                f"{hub.url}/channels/user-42/events",
                json={"data": {"n": len(sent)}},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=5,
            )
            assert r.status_code == 202, r.text
            data = f'{{"n":{len(sent)}}}'  # what a subscriber gets: compact JSON
            sent.append(data)
            wait_until(lambda: page.evaluate("seen.length") == len(sent), 15, f"event {len(sent)} shown")
        assert page.evaluate("seen") == sent
        assert len(minted) >= 3
        assert all(token not in hub.log() for token in minted)
    finally:
        context.close()
        server.shutdown()
        server.server_close()
