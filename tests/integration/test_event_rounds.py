"""When the publisher sends: the first event at once, then after ``linger_ms`` or as
soon as ROUND_EVENTS events are queued, whichever comes first, and everything at stop
without waiting out the linger. Against the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from rateguard.events.publisher import ROUND_EVENTS, EventPublisher
from rateguard.events.schema import Event
from rateguard.events.topics import ensure_topic
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

LONG_LINGER_MS = 60_000  # longer than the test: any send before it is the size trigger


def event(i: int) -> Event:
    return Event(f"round-{i:06d}", 1_790_000_000_000 + i, "rounds", "api", "key", "GET", "h",
                 "/p", 200, 1.0, 0.5, 0, 10, "127.0.0.1", "test", "allowed", "", "test")


async def test_a_full_round_is_sent_before_the_linger_and_stop_flushes_the_rest(
        kafka_brokers, topic):
    brokers = tuple(kafka_brokers.split(","))
    await ensure_topic(brokers, topic)
    publisher = EventPublisher(brokers, topic, linger_ms=LONG_LINGER_MS, spool_dir=None)
    publisher.start()

    async def published(n: int) -> bool:
        return publisher.published >= n

    publisher.publish(event(0))  # the first event after an empty queue: sent at once
    assert await wait_until(lambda: published(1), timeout=20)

    for i in range(1, ROUND_EVENTS):  # one short of a round: the publisher lingers
        publisher.publish(event(i))
    await asyncio.sleep(0.5)
    assert publisher.published == 1 and publisher.queued == ROUND_EVENTS - 1

    publisher.publish(event(ROUND_EVENTS))  # a full round: sent without the linger
    assert await wait_until(lambda: published(1 + ROUND_EVENTS), timeout=10)
    assert publisher.queued == 0

    for i in range(10):
        publisher.publish(event(ROUND_EVENTS + 1 + i))
    started = time.monotonic()
    await publisher.stop()
    assert time.monotonic() - started < 10, "stop waited out the linger"
    assert publisher.published == ROUND_EVENTS + 11 and publisher.dropped == 0
