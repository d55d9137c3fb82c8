"""Events: encoding (orjson) and publishing, both the hot-path enqueue and the whole
way to the embedded Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from rateguard.events.publisher import EventPublisher
from rateguard.events.schema import Event, encode
from rateguard.events.topics import ensure_topic

from bench.conftest import per_call

BATCH = 1000
TO_BROKER = 10_000


def make_event(i: int = 0) -> Event:
    return Event(f"a1b2c3d4e5f6{i:010x}", 1_790_000_000_000 + i, "bench", "orders",
                 "mobile-app", "GET", "api.acme.test", "/orders/42", 200, 0.412, 0.198,
                 0, 1024, "203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
                 "allowed", "standard", "proxy-7c9f-abcde")


def test_event_encode(benchmark):
    raw = benchmark(encode, make_event())
    assert raw.startswith(b'{"id":')


def test_event_encode_1000(benchmark):
    """1,000 distinct events one by one, each encoding dropped at once (as when it is
    handed to the producer). Keeping them all costs several times more: fresh memory."""
    events = [make_event(i) for i in range(BATCH)]

    def run():
        size = 0
        for event in events:
            size += len(encode(event))
        return size

    assert benchmark(run) > 0
    per_call(benchmark, BATCH)


def test_publish_enqueue_1000(benchmark, loop):
    """EventPublisher.publish as the proxy calls it (append to the workspace's pending
    list, one orjson call per 64 events), 1,000 per round; emptied between rounds."""
    publisher = EventPublisher(("127.0.0.1:9",), "unused")
    events = [make_event(i) for i in range(BATCH)]
    publish = publisher.publish

    def run():
        for event in events:
            publish(event)
        publisher._seal()
        publisher.queue.clear()
        publisher.queued = 0

    benchmark(run)
    assert publisher.dropped == 0
    per_call(benchmark, BATCH)


@pytest.fixture(scope="module")
def publisher(loop, kafka_brokers, topic):
    brokers = tuple(kafka_brokers.split(","))
    loop.run_until_complete(ensure_topic(brokers, topic))
    pub = EventPublisher(brokers, topic, linger_ms=5)

    async def start():
        pub.start()
        deadline = time.monotonic() + 30
        while not pub.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pub.connected, "the publisher did not connect to the broker"

    loop.run_until_complete(start())
    yield pub
    loop.run_until_complete(pub.stop(timeout=10))


def test_publish_to_broker_10k(benchmark, loop, publisher):
    """10,000 events enqueued at once, timed until the broker acknowledged them all
    (acks=all, zstd, the proxy's defaults but 5 ms linger): the publisher's throughput."""
    events = [make_event(i) for i in range(TO_BROKER)]

    async def drain(target: int):
        while publisher.published < target:
            await asyncio.sleep(0.001)

    def run():
        target = publisher.published + TO_BROKER
        for event in events:
            publisher.publish(event)
        loop.run_until_complete(asyncio.wait_for(drain(target), 60))

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert publisher.dropped == 0
    per_call(benchmark, TO_BROKER)


def test_event_encode_records_1000(benchmark):
    """Batched encoding: 1,000 events of one workspace into JSON-array records."""
    from rateguard.events import schema
    encode_records = getattr(schema, "encode_records", None)
    if encode_records is None:
        pytest.skip("rateguard.events.schema has no encode_records")
    events = [make_event(i) for i in range(BATCH)]
    records = benchmark(encode_records, events)
    assert sum(count for _, carried in records for _, _, count in carried) == BATCH
    per_call(benchmark, BATCH)
