"""Fixtures of the client tests: a hub that tells clients to come back fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import HubProcess

# The hub's ``retry:`` for these tests: a cut client is back within a fraction
# of a second instead of the default 3 s.
RETRY_MS = 250


@pytest.fixture(scope="session")
def fast_hub() -> Iterator[HubProcess]:
    """A memory hub with a short heartbeat (0.4 s) and a short ``retry:``."""
    hub = HubProcess(
        {"HUB_HEARTBEAT_SECONDS": "0.4", "HUB_HISTORY_SIZE": "50", "HUB_RETRY_MS": str(RETRY_MS)}
    )
    hub.start()
    yield hub
    hub.stop()
