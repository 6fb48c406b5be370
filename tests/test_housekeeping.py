"""When the memory release runs: once a wave of closes is over, never per close."""

from __future__ import annotations

import asyncio

import pytest

from hub.housekeeping import WaveEnd, release_memory, trim_after_closes


def releases(closes_per_look: list[int], **limits: int) -> list[int]:
    """Feed one entry of ``closes_per_look`` per look; the looks (1-based) that release."""
    wave = WaveEnd(0, **limits)
    count = 0
    out = []
    for look, added in enumerate(closes_per_look, start=1):
        count += added
        if wave.look(count):
            out.append(look)
    return out


def test_release_once_the_wave_stands_still() -> None:
    # 10,000 closes over three looks, then quiet: one release, at the first quiet look
    assert releases([3000, 4000, 3000, 0, 0, 0]) == [4]


def test_no_release_for_a_few_closes() -> None:
    assert releases([10, 0, 20, 0, 0, 500, 0, 0]) == []


def test_small_waves_add_up() -> None:
    assert releases([600, 0, 600, 0, 0]) == [4]


def test_steady_churn_releases_every_max_closed() -> None:
    assert releases([4000] * 12, min_closed=1000, max_closed=20_000) == [5, 10]


def test_release_memory_runs() -> None:
    release_memory()  # gc.collect and, on glibc, malloc_trim: must not raise


@pytest.mark.anyio
async def test_the_task_releases_after_a_wave() -> None:
    count = 0
    released = asyncio.Event()
    task = asyncio.create_task(trim_after_closes(lambda: count, released.set, interval=0.01))
    try:
        await asyncio.sleep(0)  # let the task take its starting count (0)
        count = 5000
        await asyncio.wait_for(released.wait(), timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
