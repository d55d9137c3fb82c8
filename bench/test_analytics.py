"""Analytics ingestion: events already in Kafka (the embedded broker), consumed by the
analytics worker and inserted into ClickHouse (embedded chdb, in this process), timed
until every event is inserted. The target is 50,000 events/s on one core: see
``events_per_cpu_second`` in the benchmark's extra info (this process's CPU time, all
threads; chdb works in threads of this process).

One round: it is seconds long and chdb allows one engine per process."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from bench.test_events import make_event
from rateguard.events.publisher import EventPublisher
from rateguard.events.topics import ensure_topic

EVENTS = 200_000


@pytest.fixture(scope="module")
def filled_topic(loop, kafka_brokers):
    """A fresh topic holding EVENTS events, published by the proxy's publisher."""
    brokers = tuple(kafka_brokers.split(","))
    topic = f"bench-analytics-{uuid.uuid4().hex[:8]}"
    loop.run_until_complete(ensure_topic(brokers, topic))

    async def fill():
        publisher = EventPublisher(brokers, topic, linger_ms=5, max_queue=EVENTS)
        publisher.start()
        for i in range(EVENTS):
            publisher.publish(make_event(i))
        deadline = time.monotonic() + 120
        while publisher.published + publisher.dropped < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await publisher.stop()
        assert publisher.published == EVENTS, f"published {publisher.published} of {EVENTS}"

    loop.run_until_complete(fill())
    return topic


def test_analytics_ingest_200k(benchmark, loop, kafka_brokers, filled_topic, workdir):
    from rateguard.analytics.worker import AnalyticsWorker
    from rateguard.settings import Settings

    path = workdir / f"clickhouse-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    settings = Settings.from_env({
        "KAFKA_BROKERS": kafka_brokers, "KAFKA_TOPIC": filled_topic,
        "CLICKHOUSE_URL": f"chdb://{path}", "CLICKHOUSE_DATABASE": "rg_bench",
        "ANALYTICS_GROUP": f"bench-{uuid.uuid4().hex[:6]}", "RATEGUARD_ENV": "development"})
    cpu = {}

    def run():
        async def ingest():
            worker = AnalyticsWorker(settings)
            await worker.start()
            cpu0, t0 = time.process_time(), time.perf_counter()
            deadline = time.monotonic() + 300
            while worker.ingester.inserted < EVENTS and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            cpu["cpu_s"] = time.process_time() - cpu0
            cpu["wall_s"] = time.perf_counter() - t0
            inserted = worker.ingester.inserted
            await worker.stop()
            return inserted

        return loop.run_until_complete(ingest())

    inserted = benchmark.pedantic(run, rounds=1, iterations=1)
    assert inserted == EVENTS
    benchmark.extra_info["events"] = EVENTS
    benchmark.extra_info["events_per_second"] = round(EVENTS / cpu["wall_s"])
    benchmark.extra_info["events_per_cpu_second"] = round(EVENTS / cpu["cpu_s"])
    print(f"\nanalytics: {EVENTS} events in {cpu['wall_s']:.2f}s wall "
          f"({EVENTS / cpu['wall_s']:,.0f}/s), {cpu['cpu_s']:.2f}s CPU "
          f"({EVENTS / cpu['cpu_s']:,.0f} events per CPU second)")
