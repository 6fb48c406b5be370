"""Publishes batched into pipelines: each caller gets its own answer, in call order,
a lone call is not delayed, and lost scripts or connections are handled."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from hub.brokers.redis_batch import ScriptBatcher

pytestmark = pytest.mark.anyio

# Appends its argument to a list and returns the list's length: the order Redis ran the calls in.
SCRIPT = "return redis.call('RPUSH', KEYS[1], ARGV[1])"
FAILING = "if ARGV[1] == 'bad' then return redis.error_reply('refused') end return ARGV[1]"


class Counting(fakeredis.FakeAsyncRedis):
    """Counts pipelines and lone script calls."""

    pipelines = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        Counting.pipelines += 1
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


@pytest.fixture
def redis() -> Counting:
    Counting.pipelines = 0
    return Counting(server=fakeredis.FakeServer())


async def test_concurrent_calls_share_pipelines_and_keep_their_order(redis: Counting) -> None:
    await redis.script_load(SCRIPT)
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    results = await asyncio.gather(*(batcher.call(["log"], [f"m{i}"]) for i in range(100)))
    assert results == list(range(1, 101))  # each caller got its own position, in call order
    assert await redis.lrange("log", 0, -1) == [f"m{i}".encode() for i in range(100)]
    # all hundred were made before the first could go out: one round trip
    assert Counting.pipelines == 1
    # calls made while a round trip is in flight go together in the next one
    first = asyncio.create_task(batcher.call(["log"], ["alone"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the runner took "alone" and awaits Redis
    later = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(10)))
    assert await first == 101
    assert later == list(range(102, 112))
    assert Counting.pipelines == 2


async def test_batches_are_capped(redis: Counting) -> None:
    await redis.script_load(SCRIPT)
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT), max_batch=10)
    results = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(51)))
    assert results == list(range(1, 52))
    assert Counting.pipelines == 5  # five pipelines of 10, then the last call alone


async def test_a_lone_call_is_a_plain_script_call(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    assert await batcher.call(["log"], ["a"]) == 1
    assert await batcher.call(["log"], ["b"]) == 2
    assert Counting.pipelines == 0


async def test_an_error_reaches_only_its_own_caller(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(FAILING))
    calls = [batcher.call(["k"], [arg]) for arg in ("a", "b", "bad", "c")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [b"a", b"b"]
    assert isinstance(results[2], ResponseError)
    assert results[3] == b"c"


async def test_scripts_lost_by_redis_are_loaded_again(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    assert await batcher.call(["log"], ["first"]) == 1
    await redis.script_flush()
    results = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(20)))
    assert results == list(range(2, 22))
    assert await redis.llen("log") == 21  # nothing ran twice
    assert Counting.pipelines == 2  # refused for NOSCRIPT, then sent again after loading


async def test_a_dead_connection_fails_every_call_of_the_batch_and_the_next_works(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    server = redis.connection_pool.connection_kwargs["server"]
    server.connected = False
    results = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    server.connected = True
    assert await batcher.call(["log"], ["after"]) == 1


async def test_a_cancelled_caller_does_not_disturb_the_others(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    tasks = [asyncio.create_task(batcher.call(["log"], [i])) for i in range(10)]
    await asyncio.sleep(0)  # all ten queued
    tasks[5].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    others = [r for i, r in enumerate(done) if i != 5 and isinstance(r, int)]
    assert len(others) == 9, done
    assert others == sorted(others)
    assert await redis.llen("log") >= 9


async def test_close_cancels_what_is_queued_or_in_flight(redis: Counting) -> None:
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    calls = [asyncio.create_task(batcher.call(["log"], [i])) for i in range(5)]
    await asyncio.sleep(0)  # queued, the runner started
    await batcher.close()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in done), done
    assert await batcher.call(["log"], ["after"]) >= 1  # usable again (a new runner)
