"""``/ui`` from package data, ``HUB_UI=false``, and the figures behind ``/_hub/stats``."""

from __future__ import annotations

import re

import pytest

from hub.core.subscriber import Subscriber
from hub.http.app import HubApp, create_app
from hub.http.dashboard import FILES, load
from hub.settings import Settings
from tests.core.helpers import RecordingSink
from tests.http.conftest import http

pytestmark = pytest.mark.anyio


async def test_the_page_and_its_files_are_served_from_the_package(app: HubApp) -> None:
    async with http(app) as client:
        page = await client.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for name in ("ui.js", "ui.css"):
            r = await client.get(f"/ui/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"] == FILES[name]
            assert r.content == load()[name]
        assert (await client.get("/ui/secrets.txt")).status_code == 404
        assert (await client.get("/ui/..%2Fapp.py")).status_code == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Offline: no absolute URL to fetch in any of the files (the CSP forbids it too)."""
    for name, body in load().items():
        text = body.decode()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", text), name
        assert not re.search(r"""(fetch|EventSource)\(\s*["'`](https?:)?//""", text), name
        assert "import " not in text or name != "ui.js", name


async def test_hub_ui_false_serves_neither_the_page_nor_its_stream() -> None:
    app = create_app(Settings(ui=False))
    await app.start()
    try:
        async with http(app) as client:
            for path in ("/ui", "/ui/ui.js", "/_hub/stats"):
                assert (await client.get(path)).status_code == 404, path
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await app.stop()


async def test_the_figures_count_rates_top_channels_and_end_on_drain(app: HubApp) -> None:
    assert app.hub is not None
    monitor = app.monitor
    updates = monitor.updates()
    first = await anext(updates)  # a listener: the top channels are worked out
    assert first["streams"] == 0
    await app.hub.attach(Subscriber(["a"], RecordingSink()), [None])
    await app.hub.attach(Subscriber(["a"], RecordingSink()), [None])
    await app.hub.attach(Subscriber(["b"], RecordingSink()), [None])
    async with http(app) as client:
        for n in range(5):
            await client.post("/channels/a/events", json={"data": n})
    app.hub.flush()
    figures = monitor.figures()
    assert figures["streams"] == 3
    assert figures["channels"] == 2
    assert figures["totals"]["deliveries"] == 10
    assert figures["totals"]["published"] == 5
    assert figures["deliveries_per_s"] > 0
    assert figures["deliveries_history"][-1] == figures["deliveries_per_s"]
    assert figures["publish_p99_ms"] is not None
    assert [(c["channel"], c["subscribers"]) for c in figures["top"]] == [("a", 2), ("b", 1)]
    assert figures["top"][0]["last_id"] is not None
    # The next tick counts only what came since.
    assert monitor.figures()["deliveries_per_s"] == 0
    # Draining ends the stream of figures.
    app.drain()
    with pytest.raises(StopAsyncIteration):
        await anext(updates)
