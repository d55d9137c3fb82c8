"""A topic deleted and created again reuses its offsets (0, 1, 2 ...). Analytics skips
records at or below the highest offset ClickHouse holds for a partition (its guard
against counting a replay twice); on a re-created topic that guard would silently drop
the new topic's first records. The consumer tells the two apart by content: the
record at a reused offset carries other events than ClickHouse stored for it.

Two topics stand for the old and the re-created one: same partition count, same
record key, so the same partition; one ClickHouse database for both.
"""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from rateguard.events.schema import Event, encode_records
from rateguard.events.topics import ensure_topic
from tests.faults.conftest import Pipeline, new_clickhouse, unique

pytestmark = pytest.mark.integration


def events(n: int, run: str) -> list[Event]:
    now = int(time.time() * 1000)
    return [Event(f"{run}-{i}", now, "recreated", "api", "k", "GET", "h", f"/{i}", 200, 1.0,
                  0.5, 0, 10, "127.0.0.1", "t", "allowed", "", "i") for i in range(n)]


async def produce(brokers, topic: str, batch: list[Event]) -> None:
    """One record per event, all with the workspace as key (one partition)."""
    await ensure_topic(brokers, topic)
    producer = AIOKafkaProducer(bootstrap_servers=",".join(brokers), acks="all")
    await producer.start()
    try:
        for event in batch:
            (value, _), = encode_records([event])
            await producer.send_and_wait(topic, value, key=b"recreated")
    finally:
        await producer.stop()


async def ingest(clickhouse, brokers, topic: str, batch: list[Event]) -> dict[str, int]:
    """Run an analytics ingester on ``topic`` until ``batch`` landed; its counts by id."""
    pipeline = await Pipeline(clickhouse, brokers, topic).start()
    try:
        return await pipeline.wait_exactly_once([e.id for e in batch], timeout=30)
    finally:
        await pipeline.stop()


async def test_a_recreated_topic_is_read_from_its_start(kafka_brokers, clickhouse_url):
    brokers = (kafka_brokers,) if isinstance(kafka_brokers, str) else tuple(kafka_brokers)
    clickhouse = await new_clickhouse(clickhouse_url)
    old, new = events(30, uuid.uuid4().hex[:6]), events(50, uuid.uuid4().hex[:6])
    try:
        first = unique("before")
        await produce(brokers, first, old)
        counts = await ingest(clickhouse, brokers, first, old)
        assert len(counts) == 30 and set(counts.values()) == {1}

        # The "re-created" topic: offsets 0..49 on the same partition, past the 29
        # ClickHouse holds, so its end offset does not give the re-creation away.
        second = unique("after")
        await produce(brokers, second, new)
        counts = await ingest(clickhouse, brokers, second, new)
        missing = {e.id for e in new} - set(counts)
        assert not missing, f"{len(missing)} of the re-created topic's 50 events skipped"
        assert set(counts.values()) == {1}
        everything = await ingest(clickhouse, brokers, second, old + new)
        assert len(everything) == 80 and set(everything.values()) == {1}
    finally:
        await clickhouse.close()
