"""Kafka -> ClickHouse, exactly once.

Events are read with the analytics consumer group, batched by size and time, decoded
(malformed ones are counted and skipped, never fatal), inserted, and only then are
the offsets committed. Each row carries its Kafka partition and offset; when
partitions are assigned with a committed offset below the highest offset ClickHouse
already holds, the consumer resumes after the latter, so a crash between insert and
commit does not count twice.

The seek alone is not enough: records fetched before it took effect, or replayed after
a rebalance reset a partition to an older committed offset, would be inserted again.
So every record is also checked against a per-partition floor (the highest offset
ClickHouse holds, read once per partition, then kept up to date by our own inserts)
and skipped when at or below it. A floor above the partition's end offset means the
topic was re-created (an in-memory broker restarted): the floor is dropped. A re-created
topic may also have grown past the floor by the time it is read, so the first record at
or below the floor is compared with what ClickHouse holds for that offset: when its
events are not all there, the offsets were reused, and the floor is dropped too.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from rateguard.analytics.clickhouse import ClickHouse
from rateguard.events.schema import decode_record

log = logging.getLogger(__name__)


class _Resume(ConsumerRebalanceListener):
    def __init__(self, ingester: "Ingester") -> None:
        self.ingester = ingester

    async def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        await self.ingester.resume(assigned)


class Ingester:
    def __init__(self, clickhouse: ClickHouse, brokers: tuple[str, ...], topic: str, group: str,
                 *, batch_size: int = 20_000, batch_seconds: float = 1.0) -> None:
        self.clickhouse = clickhouse
        self.topic = topic
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=",".join(brokers), group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_interval_ms=600_000,
            max_partition_fetch_bytes=4 * 1024 * 1024)
        self.inserted = 0
        self.invalid = 0
        self.last_insert = 0.0
        self.last_error: str | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._floors: dict[TopicPartition, int] = {}  # highest offset stored, -1: none
        self.skipped = 0  # records already in ClickHouse, not inserted again

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Resume(self))

    async def resume(self, assigned) -> None:
        """Seek past what ClickHouse already holds (see module docstring)."""
        if not assigned:
            return
        stored = await self._retry(self.clickhouse.stored_offsets, "read stored offsets")
        ends = await self.consumer.end_offsets(list(assigned))
        for tp in assigned:
            last = stored.get(tp.partition)
            if last is None:
                continue
            committed = await self.consumer.committed(tp)
            # An end offset below what we stored means the topic was re-created
            # (e.g. an in-memory broker restarted): its old offsets mean nothing now.
            # Without a committed offset (a new group, or a broker that lost its
            # state) there is no replay to skip ahead of: the floor check in run()
            # compares what it reads with what is stored, record by record.
            if last + 1 <= ends.get(tp, 0) and committed is not None and committed < last + 1:
                log.info("analytics: %s resumes at %d (already stored up to %d)",
                         tp, last + 1, last)
                self.consumer.seek(tp, last + 1)

    async def _retry(self, fn, what: str, *args):
        backoff = 0.2
        while True:
            try:
                return await fn(*args)
            except Exception as exc:  # ClickHouse down: wait, never drop
                self.last_error = f"{what}: {exc}"
                if self._stopping:
                    raise
                log.warning("analytics: cannot %s (%s); retrying in %.1fs", what, exc, backoff)
                try:  # a stop cuts the wait short
                    await asyncio.wait_for(self._stopped.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, 10.0)

    async def run(self) -> None:
        consumer = self.consumer
        while not self._stopping:
            rows: list[tuple] = []
            offsets: dict[TopicPartition, int] = {}
            deadline = time.monotonic() + self.batch_seconds
            while len(rows) < self.batch_size and not self._stopping:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                batches = await consumer.getmany(
                    timeout_ms=int(wait * 1000), max_records=self.batch_size - len(rows))
                for tp, messages in batches.items():
                    floor = await self._floor(tp, messages[0].offset if messages else 0)
                    if messages and messages[0].offset <= floor:
                        floor = await self._same_records(tp, messages[0], floor)
                    for message in messages:
                        if message.offset <= floor:
                            self.skipped += 1
                            offsets[tp] = message.offset + 1
                            continue
                        decoded, errors = decode_record(message.value or b"")
                        for row in decoded:
                            rows.append((*row, tp.partition, message.offset))
                        if errors:
                            self.invalid += len(errors)
                            log.warning("analytics: skipped %d malformed event(s) at %s@%d: %s",
                                        len(errors), tp, message.offset, errors[0])
                        offsets[tp] = message.offset + 1
            if not offsets:
                continue
            if rows:
                await self._retry(self.clickhouse.insert, "insert into clickhouse", rows)
                for tp, next_offset in offsets.items():
                    self._floors[tp] = max(self._floors.get(tp, -1), next_offset - 1)
                self.inserted += len(rows)
                self.last_insert = time.time()
                self.last_error = None
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Harmless: the next start resumes from ClickHouse's offsets.
                log.warning("analytics: offset commit failed: %s", exc)

    async def _floor(self, tp: TopicPartition, first_offset: int) -> int:
        """The highest offset of ``tp`` ClickHouse holds (-1: none), for records
        starting at ``first_offset``."""
        floor = self._floors.get(tp)
        if floor is None:
            stored = await self._retry(self.clickhouse.stored_offsets, "read stored offsets")
            floor = self._floors[tp] = stored.get(tp.partition, -1)
        if first_offset <= floor:
            end = (await self.consumer.end_offsets([tp])).get(tp, 0)
            if end <= floor:
                log.warning("analytics: %s ends at %d, below the %d already stored: the "
                            "topic was re-created; reading it from the start", tp, end, floor)
                floor = self._floors[tp] = -1
        return floor

    async def _same_records(self, tp: TopicPartition, message, floor: int) -> int:
        """``floor``, or -1 when the events this record carries are not all stored at
        its offset: the topic was re-created and its offsets reused."""
        decoded, _ = decode_record(message.value or b"")
        if not decoded:
            return floor  # nothing to compare: keep the floor
        stored = await self._retry(self.clickhouse.ids_at, "read stored ids",
                                   tp.partition, message.offset)
        if {row[0] for row in decoded} <= stored:  # (a re-created topic's old records
            return floor                            # may share the offset: a subset)
        log.warning("analytics: %s@%d holds other events than ClickHouse stored for that "
                    "offset: the topic was re-created; reading it without the old floor",
                    tp, message.offset)
        self._floors[tp] = -1
        return -1

    def request_stop(self) -> None:
        """Finish the batch in hand (or give up a retry) and leave ``run``."""
        self._stopping = True
        self._stopped.set()

    async def stop(self) -> None:
        self.request_stop()
        await self.consumer.stop()
