from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import HubProcess, RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubProcess]:
    """One memory-broker hub for the read-mostly end-to-end tests (short heartbeat)."""
    hub = HubProcess({"HUB_HEARTBEAT_SECONDS": "0.4", "HUB_HISTORY_SIZE": "50"})
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free port (the test may kill it)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()
