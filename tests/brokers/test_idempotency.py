"""Idempotent publishes: a publish sent again with its key is stored once, in both brokers."""

from __future__ import annotations

import fakeredis
import pytest
from redis.exceptions import ResponseError

from hub.brokers.idempotency import Records, fingerprint
from hub.brokers.memory import MemoryBroker
from hub.brokers.redis_codec import SCRIPT, idempotency_record, stream_key
from hub.core.event import Event, Payload
from hub.inputs import InputError, check_idempotency_key
from hub.publisher import AsyncPublisher, Message
from tests.brokers.conftest import Make
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


def payloads(*values: int) -> list[Payload]:
    return [Payload("json", str(v)) for v in values]


# -- the memory broker ------------------------------------------------------


async def test_memory_a_publish_sent_again_with_its_key_is_stored_once() -> None:
    broker = MemoryBroker()
    delivered: list[Event] = []
    await broker.start(delivered.append)
    first = await broker.publish("c", payloads(1, 2), "k-1")
    again = await broker.publish("c", payloads(1, 2), "k-1")
    assert again == first
    assert [e.id for e in delivered] == first
    history = await broker.history("c", None)
    assert [e.id for e in history.events] == first
    # Without a key, or with another one, it is a new publish.
    assert await broker.publish("c", payloads(1, 2)) != first
    assert await broker.publish("c", payloads(1, 2), "k-2") != first
    assert len(delivered) == 6


async def test_memory_a_key_reused_for_other_events_is_refused_and_keys_are_per_channel() -> None:
    broker = MemoryBroker()
    await broker.start(lambda _: None)
    first = await broker.publish("c", payloads(1), "k")
    with pytest.raises(InputError) as info:
        await broker.publish("c", payloads(2), "k")
    assert (info.value.status, info.value.error) == (422, "idempotency_conflict")
    # The same key on another channel is another publish.
    other = await broker.publish("d", payloads(2), "k")
    assert [e.id for e in (await broker.history("d", None)).events] == other
    assert [e.id for e in (await broker.history("c", None)).events] == first
    with pytest.raises(InputError):
        await broker.publish("c", [Payload("json", "1", event="other")], "k")


async def test_memory_records_expire_after_their_time() -> None:
    now = [1000.0]
    records = Records(seconds=300, clock=lambda: now[0])
    records.remember("c", "k", b"p", ["1-0"])
    now[0] += 299.9
    assert records.earlier("c", "k", b"p") == ["1-0"]
    now[0] += 0.2
    assert records.earlier("c", "k", b"p") is None
    assert len(records) == 0


def test_records_are_bounded_oldest_first() -> None:
    records = Records(seconds=300, max_records=2)
    for n in range(3):
        records.remember("c", f"k{n}", b"p", [f"{n}-0"])
    assert len(records) == 2
    assert records.earlier("c", "k0", b"p") is None
    assert records.earlier("c", "k2", b"p") == ["2-0"]
    assert records.dropped == 1


def test_fingerprints_tell_every_field_apart() -> None:
    base = Payload("json", '"ab"', "t", 5)
    variants = [
        Payload("text", '"ab"', "t", 5),
        Payload("json", '"a"', "bt", 5),
        Payload("json", '"ab"', None, 5),
        Payload("json", '"ab"', "t", None),
        Payload("json", '"ab"', "t", 50),
    ]
    assert len({fingerprint([base]), *(fingerprint([v]) for v in variants)}) == 6
    assert fingerprint([base, base]) != fingerprint([base])


@pytest.mark.parametrize("key", ["", " ", "a b", "é", "x" * 256, "a\nb"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(InputError) as info:
        check_idempotency_key(key)
    assert info.value.status == 400


def test_good_keys_pass() -> None:
    for key in ("a", "8e03978e-40d5-43e8-bc93-6894a57f9324", "!~{}:#", "x" * 255):
        assert check_idempotency_key(key) == key
    assert check_idempotency_key(None) is None


# -- the Redis broker and the script (fakeredis) -----------------------------


async def test_redis_a_publish_sent_again_with_its_key_is_stored_and_announced_once(
    make: Make, redis: fakeredis.FakeAsyncRedis
) -> None:
    broker, delivered = await make(idempotency_seconds=120)
    await broker.subscribe("c")
    first = await broker.publish("c", payloads(1, 2), "order-42")
    again = await broker.publish("c", payloads(1, 2), "order-42")
    assert again == first
    await until(lambda: len(delivered) >= 2)
    assert await redis.xlen(stream_key("hub", "c")) == 2
    record = idempotency_record(stream_key("hub", "c"), "order-42")
    assert record == "hub:c:idem#order-42"
    assert 119_000 < await redis.pttl(record) <= 120_000
    # Nothing more was announced: one more publish is the third event delivered.
    third = await broker.publish("c", payloads(3))
    await until(lambda: len(delivered) >= 3)
    assert [e.id for e in delivered] == [*first, *third]


async def test_redis_a_key_reused_for_other_events_is_a_422(make: Make) -> None:
    broker, _ = await make()
    await broker.publish("c", payloads(1), "k")
    with pytest.raises(InputError) as info:
        await broker.publish("c", payloads(2), "k")
    assert (info.value.status, info.value.error) == (422, "idempotency_conflict")
    assert "Redis" not in info.value.detail


async def test_the_script_takes_its_options_in_any_order_and_refuses_bad_ones(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    script = redis.register_script(SCRIPT)
    key = stream_key("hub", "raw")
    options = ["idemttl=5000", "idem=abc", "ttl=60000"]
    first = await script(keys=[key], args=[1000, *options, "json", "1", "", ""])
    again = await script(keys=[key], args=[1000, "idem=abc", "json", "1", "", ""])
    assert again == first
    assert await redis.xlen(key) == 1
    assert 4000 < await redis.pttl("hub:raw:idem#abc") <= 5000
    for bad in (["idem=a b"], ["idem="], ["idemttl=0", "idem=x"], ["idem=x", "idem=y"], ["idemttl=x"]):
        with pytest.raises(ResponseError, match="ssehub: "):
            await script(keys=[key], args=[1000, *bad, "json", "1", "", ""])
    with pytest.raises(ResponseError, match="idempotency key reused"):
        await script(keys=[key], args=[1000, "idem=abc", "json", "2", "", ""])
    assert await redis.xlen(key) == 1


async def test_the_python_publisher_sends_the_key(redis: fakeredis.FakeAsyncRedis) -> None:
    publisher = AsyncPublisher(redis, idempotency_seconds=60)
    messages = [Message(1), Message("x", text=True)]
    first = await publisher.publish_many("p", messages, idempotency_key="k")
    assert await publisher.publish_many("p", messages, idempotency_key="k") == first
    assert await redis.xlen(stream_key("hub", "p")) == 2
    assert 59_000 < await redis.pttl("hub:p:idem#k") <= 60_000
    with pytest.raises(InputError):
        await publisher.publish("p", 1, idempotency_key="no spaces")
