"""The app in-process, started and stopped around a test, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from hub.http.app import HubApp, create_app
from hub.settings import Settings


@pytest.fixture
async def app() -> AsyncIterator[HubApp]:
    hub_app = create_app(Settings())
    await hub_app.start()
    try:
        yield hub_app
    finally:
        await hub_app.stop()


def http(app: HubApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")
