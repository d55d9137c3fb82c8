"""ClickHouse down: analytics stops committing, retries with backoff and resumes, with
no loss and no double count, also when it dies between an insert and its commit.

chdb runs in this process, so "down" is made two real ways: an ingester pointed at a
ClickHouse HTTP URL where nothing listens, and the events table taken away (renamed)
under a running ingester, then given back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from rateguard.analytics.clickhouse import ClickHouse
from rateguard.analytics.consumer import Ingester
from rateguard.embedded.servers import free_port
from rateguard.events.publisher import EventPublisher
from rateguard.events.schema import Event
from rateguard.events.topics import ensure_topic
from tests.faults.conftest import Pipeline, new_clickhouse, unique, wait_until

pytestmark = pytest.mark.integration


def events(n: int) -> list[Event]:
    run = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    return [Event(f"{run}-{i:06d}", now + i, "chfault", "api", "key", "GET", "h", f"/p/{i}",
                  200, 1.0, 0.5, 0, 10, "127.0.0.1", "test", "allowed", "", "test")
            for i in range(n)]


async def publish(brokers, topic, batch: list[Event]) -> None:
    publisher = EventPublisher(brokers, topic, linger_ms=5, spool_dir=None)
    publisher.start()
    for event in batch:
        publisher.publish(event)
    await wait_until(lambda: _true(publisher.published >= len(batch)), timeout=15)
    await publisher.stop()
    assert publisher.published == len(batch) and publisher.dropped == 0


async def _true(value: bool) -> bool:
    return value


async def committed(ingester: Ingester, topic: str) -> int:
    """Offsets the group has committed, summed over the topic's partitions."""
    consumer = ingester.consumer
    partitions = consumer.partitions_for_topic(topic) or set()
    from aiokafka import TopicPartition
    total = 0
    for p in partitions:
        offset = await consumer.committed(TopicPartition(topic, p))
        total += offset or 0
    return total


@pytest.fixture
def kafka(kafka_brokers):
    return tuple(kafka_brokers.split(","))


async def test_clickhouse_unreachable_nothing_committed_then_everything_once(
        kafka, clickhouse_url):
    topic = unique("ch-down")
    await ensure_topic(kafka, topic)
    batch = events(300)
    await publish(kafka, topic, batch)
    group = unique("ch-down-group")
    database = f"rg_faults_{uuid.uuid4().hex[:8]}"

    dead = ClickHouse(f"http://127.0.0.1:{free_port()}", database)
    down = Ingester(dead, kafka, topic, group, batch_seconds=0.2)
    await down.start()
    task = asyncio.ensure_future(down.run())
    try:
        assert await wait_until(lambda: _true(down.last_error is not None), timeout=15)
        await asyncio.sleep(2)  # several retries with backoff
        assert down.inserted == 0 and not task.done(), "it must keep retrying, not give up"
        assert "Connection refused" in down.last_error or "refused" in down.last_error.lower()
    finally:
        down.request_stop()
        await asyncio.wait([task], timeout=15)
        await down.stop()
        await dead.close()

    clickhouse = ClickHouse(clickhouse_url, database)
    await clickhouse.setup()
    pipeline = Pipeline(clickhouse, kafka, topic)
    pipeline.group = group  # the same consumer group resumes
    await pipeline.start()
    try:
        counts = await pipeline.wait_exactly_once([e.id for e in batch])
        assert len(counts) == len(batch), "events lost while ClickHouse was down"
        assert set(counts.values()) == {1}, "events counted twice"
    finally:
        await pipeline.stop()
        await clickhouse.close()


async def test_table_gone_under_a_running_ingester_it_retries_and_resumes(kafka, clickhouse_url):
    topic = unique("ch-gone")
    clickhouse = await new_clickhouse(clickhouse_url)
    pipeline = await Pipeline(clickhouse, kafka, topic).start()
    db = clickhouse.database
    try:
        first = events(100)
        await publish(kafka, topic, first)
        assert len(await pipeline.counts([e.id for e in first])) in range(0, 101)
        await pipeline.wait_exactly_once([e.id for e in first])

        await clickhouse.query(f"RENAME TABLE {db}.api_events TO {db}.api_events_away")
        second = events(200)
        await publish(kafka, topic, second)
        ingester = pipeline.ingester
        assert await wait_until(lambda: _true(ingester.last_error is not None), timeout=15)
        assert "insert" in ingester.last_error
        await asyncio.sleep(2)
        await clickhouse.query(f"RENAME TABLE {db}.api_events_away TO {db}.api_events")

        ids = [e.id for e in first + second]
        counts = await pipeline.wait_exactly_once(ids, timeout=30)
        assert len(counts) == len(ids), "events lost while the table was away"
        assert set(counts.values()) == {1}, "events counted twice"
        assert ingester.last_error is None
        _, rows = await clickhouse.query(
            f"SELECT sum(requests) FROM {db}.api_events_minute WHERE workspace_id = 'chfault'")
        assert rows[0][0] == len(ids), "the per-minute rollup counts each event once"
    finally:
        await pipeline.stop()
        await clickhouse.close()


class _Crash(BaseException):
    """Not an Exception: nothing in the ingester catches it, as with a killed process."""


class _CrashAfterInsert(ClickHouse):
    """The real ClickHouse; once the first insert has succeeded, the ingester dies on
    the spot, before the next line (its offset commit) runs."""

    async def insert(self, rows):
        await super().insert(rows)
        raise _Crash


async def test_crash_between_insert_and_commit_does_not_double_count(kafka, clickhouse_url):
    topic = unique("ch-crash")
    await ensure_topic(kafka, topic)
    first = events(250)
    await publish(kafka, topic, first)
    group = unique("ch-crash-group")
    setup = await new_clickhouse(clickhouse_url)
    database = setup.database

    crashing = _CrashAfterInsert(clickhouse_url, database)
    victim = Ingester(crashing, kafka, topic, group, batch_seconds=0.5)
    await victim.start()
    task = asyncio.ensure_future(victim.run())
    await asyncio.wait([task], timeout=20)
    assert task.done() and isinstance(task.exception(), _Crash), "no crash after insert"
    assert await committed(victim, topic) == 0, "nothing may be committed before the crash"
    await victim.consumer.stop()  # the process is gone; its group membership ends
    await crashing.close()

    _, rows = await setup.query(f"SELECT count() FROM {database}.api_events")
    inserted_before_crash = rows[0][0]
    assert inserted_before_crash == len(first), f"the crash must come after a real insert ({inserted_before_crash})"

    pipeline = Pipeline(setup, kafka, topic)
    pipeline.group = group  # the restarted worker, same group
    await pipeline.start()
    try:
        second = events(50)
        await publish(kafka, topic, second)
        ids = [e.id for e in first + second]
        counts = await pipeline.wait_exactly_once(ids, timeout=30)
        assert len(counts) == len(ids), "events lost across the crash"
        doubled = [i for i, c in counts.items() if c > 1]
        assert not doubled, f"{len(doubled)} events counted twice after the crash"
    finally:
        await pipeline.stop()
        await setup.close()
