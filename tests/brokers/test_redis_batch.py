"""Publishes batched into pipelines: each caller gets its own answer, in call order,
a lone call is not delayed, and lost scripts or connections are handled."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import fakeredis
import pytest
from hiredis import pack_command
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from hub.brokers.redis_batch import ScriptBatcher

pytestmark = pytest.mark.anyio

# Appends its argument to a list and returns the list's length: the order Redis ran the calls in.
SCRIPT = "return redis.call('RPUSH', KEYS[1], ARGV[1])"
FAILING = "if ARGV[1] == 'bad' then return redis.error_reply('refused') end return ARGV[1]"


class Counting(fakeredis.FakeAsyncRedis):
    """Counts the commands Redis was sent, by name."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[bytes] = []
        sent = self.sent
        pool = self.connection_pool
        make: Any = pool.make_connection

        def make_counting() -> Any:
            conn = make()
            send = conn.send_packed_command

            async def counting(command: Any, check_health: bool = True) -> None:
                packed = command if isinstance(command, bytes) else b"".join(command)
                sent.extend(re.findall(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", packed))
                await send(command, check_health)

            conn.send_packed_command = counting
            return conn

        pool.make_connection = make_counting  # type: ignore[method-assign]


@pytest.fixture
def redis() -> Counting:
    return Counting(server=fakeredis.FakeServer())


async def test_concurrent_calls_share_pipelines_and_keep_their_order(redis: Counting) -> None:
    await redis.script_load(SCRIPT)
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    results = await asyncio.gather(*(batcher.call(["log"], [f"m{i}"]) for i in range(100)))
    assert results == list(range(1, 101))  # each caller got its own position, in call order
    assert await redis.lrange("log", 0, -1) == [f"m{i}".encode() for i in range(100)]
    # all hundred were made before the first could go out: one round trip
    assert batcher.round_trips == 1
    # calls made while a round trip is in flight go together in the next one
    first = asyncio.create_task(batcher.call(["log"], ["alone"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the runner took "alone" and awaits Redis
    later = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(10)))
    assert await first == 101
    assert later == list(range(102, 112))
    assert batcher.round_trips == 3  # "alone" went at once, the ten together after it


async def test_batches_are_capped(redis: Counting) -> None:
    await redis.script_load(SCRIPT)
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT), max_batch=10)
    results = await asyncio.gather(*(batcher.call(["log"], [i]) for i in range(51)))
    assert results == list(range(1, 52))
    assert batcher.round_trips == 6  # five pipelines of 10, then the last call alone


async def test_a_lone_call_goes_out_at_once_in_a_round_trip_of_its_own(redis: Counting) -> None:
    await redis.script_load(SCRIPT)
    batcher = ScriptBatcher(redis, redis.register_script(SCRIPT))
    assert await batcher.call(["log"], ["a"]) == 1
    assert await batcher.call(["log"], ["b"]) == 2
    assert batcher.round_trips == 2
    assert redis.sent.count(b"EVALSHA") == 2


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
    # Each time: refused for NOSCRIPT, then sent again after loading the script.
    assert batcher.round_trips == 4
    assert redis.sent.count(b"SCRIPT") == 3  # two SCRIPT LOADs, and this test's SCRIPT FLUSH


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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(exclude_categories=["Cs"])),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
        ),
        max_size=12,
    )
)
def test_the_calls_packed_here_are_the_bytes_redis_py_would_send(args: list[str | int]) -> None:
    command: Any = ("EVALSHA", "0" * 40, 1, "hub:{ch}", *args)  # hiredis's stub: a 1-tuple
    serializer: Any = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]
    assert pack_command(command) == b"".join(serializer.pack(*command))
