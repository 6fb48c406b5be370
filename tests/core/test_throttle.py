"""A repeated warning is logged once per window, with how many it stands for."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub.core.throttle import Throttle

pytestmark = pytest.mark.anyio


async def test_the_first_is_logged_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(logging.getLogger("t"), seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="t"):
        for i in range(100):
            throttle.hit("lost %d", i)
        assert [r.getMessage() for r in caplog.records] == ["lost 0"]
        async with asyncio.timeout(5):
            while len(caplog.records) < 2:
                await asyncio.sleep(0.02)
    assert caplog.records[1].getMessage() == "lost 99 (and 98 more like it in the last 0s; 100 in all)"
    assert throttle.total == 100
    throttle.close()


async def test_a_traceback_is_attached_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(logging.getLogger("t"), seconds=60)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        with caplog.at_level(logging.WARNING, logger="t"):
            throttle.hit("failed", exc_info=exc)
            throttle.hit("failed", exc_info=exc)
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None
    throttle.close()
