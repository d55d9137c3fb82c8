"""Events from the proxy's hot path to Kafka, without the request ever waiting.

``publish`` appends to a bounded in-memory queue (a deque) and returns. A background
task drains the queue into aiokafka's producer, which batches by ``linger_ms`` and
``batch_bytes``. Events a failed send leaves undelivered go back to the head of the
queue and are retried with backoff.

With a spool (``EVENT_SPOOL_DIR``, see spool.py) nothing is lost to an outage that the
spool's cap can hold: when the queue is full, new events go to the spool, and once
anything is spooled every new event follows it there, so order is kept; when Kafka has
been failing for ``spool_after`` seconds the queue itself moves to the spool's head.
After recovery the queue drains first, then the spool, oldest segment first. At
shutdown what Kafka did not take stays in the spool for the next start.

Without a spool, or past its cap, events are dropped: counted (``on_dropped``) and
logged, never silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from rateguard.events.schema import (PART_EVENTS, Event, encode_records, join_parts,
                                     parts_of)
from rateguard.events.spool import Spool

log = logging.getLogger(__name__)

LINGER_UNLESS = 2000  # events queued: past this, send at once instead of lingering
DROP_LOG_SECONDS = 10.0  # at most one drop line per this interval (with a count)


def _noop(count: int) -> None:
    pass


class EventPublisher:
    def __init__(
        self, brokers: tuple[str, ...], topic: str, *, max_queue: int = 100_000,
        linger_ms: int = 100, batch_bytes: int = 512 * 1024, compression: str = "zstd",
        on_published: Callable[[int], None] = _noop, on_dropped: Callable[[int], None] = _noop,
        spool_dir: str | None = None, spool_max_bytes: int = 1024 ** 3,
        spool_after: float = 5.0,
    ) -> None:
        self.spool: Spool | None = None
        if spool_dir:
            self.spool = Spool(spool_dir, spool_max_bytes,
                               segment_events=max(1, min(20_000, max_queue // 2))).open()
        self.spool_after = spool_after
        self._spooling = bool(self.spool and len(self.spool))  # new events follow (order)
        self._inflight: list[Event] = []  # the batch being sent
        self._down_since: float | None = None
        self._drops_unlogged = 0
        self._drop_logged_at = 0.0
        self.brokers = brokers
        self.topic = topic
        self.max_queue = max_queue
        self.queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self.linger = linger_ms / 1000.0
        self._producer_args = dict(
            # the publisher lingers itself (see _run); the producer sends at once
            bootstrap_servers=",".join(brokers), linger_ms=0,
            max_batch_size=batch_bytes, acks="all", request_timeout_ms=10_000,
            compression_type=None if compression == "none" else compression,
        )
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.connected = False
        self._on_published = on_published
        self._on_dropped = on_dropped
        self.published = 0
        self.dropped = 0

    # -- hot path -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        queue = self.queue
        if self._spooling or len(queue) >= self.max_queue:
            spool = self.spool
            if spool is not None and spool.append(event):
                if not self._spooling:
                    self._spooling = True
                    self._wakeup.set()
                return
            self._drop(1, "the event spool is full" if spool else "the event queue is full")
            return
        queue.append(event)
        if len(queue) == 1:
            self._wakeup.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._on_dropped(count)
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_SECONDS:
            log.error("events: %s; dropped %d event(s) (%d in all)", why,
                      self._drops_unlogged, self.dropped)
            self._drops_unlogged = 0
            self._drop_logged_at = now

    @property
    def spooled(self) -> int:
        return len(self.spool) if self.spool is not None else 0

    def _refill(self) -> bool:
        """Move the spool's oldest segment into the (empty) queue; False if none."""
        spool = self.spool
        if spool is None or not len(spool):
            self._spooling = False
            return False
        self.queue.extend(spool.take())
        if not len(spool):
            self._spooling = False
        return True

    def _failing(self) -> None:
        """Kafka failed again: past ``spool_after`` seconds, the queue goes to disk."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self.connected = False
        if self.spool is not None and self.queue and now - self._down_since >= self.spool_after:
            self._spill()

    def _spill(self) -> None:
        events = list(self.queue)
        self.queue.clear()
        lost = self.spool.prepend(events)
        self._spooling = True
        if lost:
            self._drop(lost, "the event spool is full")

    # -- background ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run_logged())

    async def _run_logged(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("events: the publisher stopped; events are no longer delivered")
            raise

    async def _connect(self) -> AIOKafkaProducer:
        backoff = 0.2
        while True:
            producer = AIOKafkaProducer(**self._producer_args)
            try:
                await producer.start()
                self.connected = True
                log.info("events: connected to kafka %s, topic %s", ",".join(self.brokers),
                         self.topic)
                return producer
            except (KafkaError, OSError) as exc:
                await producer.stop()
                if self._stopping:
                    raise
                self._failing()
                log.warning("events: kafka unavailable (%s), retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run(self) -> None:
        self._producer = producer = await self._connect()
        backoff = 0.2
        while True:
            if self.spool is not None:
                self.spool.flush()
            if not self.queue and not self._refill():
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._inflight = self._take(5000)
            try:
                failed, exc = await self._send(producer, batch)
            except (KafkaError, OSError) as error:
                failed, exc = batch, error
            self._inflight = []
            if not failed:
                backoff = 0.2
                if len(self.queue) < LINGER_UNLESS and not self._stopping:
                    # Let events gather: fewer, larger records cost the proxy far less
                    # than one produce request per few events.
                    await asyncio.sleep(self.linger)
                if self._down_since is not None:
                    log.warning("events: kafka is back after %.1fs; %d queued, %d spooled",
                                time.monotonic() - self._down_since, len(self.queue),
                                self.spooled)
                    self._down_since = None
                self.connected = True
            else:
                self._requeue(failed)
                self._failing()
                log.warning("events: publish failed (%s); %d queued, retrying in %.1fs",
                            exc, len(self.queue), backoff)
                if self._stopping:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _take(self, limit: int) -> list[Event]:
        queue = self.queue
        count = min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]

    async def _send(self, producer: AIOKafkaProducer,
                    batch: list[Event]) -> tuple[list[Event], BaseException | None]:
        """Send a batch as one or more records per workspace; return the events that
        were not delivered and why."""
        topic = self.topic
        by_workspace: dict[str, list[Event]] = {}
        for event in batch:
            group = by_workspace.get(event.workspace_id)
            if group is None:
                group = by_workspace[event.workspace_id] = []
            group.append(event)
        sent: list[tuple[asyncio.Future, list[Event]]] = []
        unsent: list[Event] = []
        error: BaseException | None = None
        for workspace_id, events in by_workspace.items():
            key = workspace_id.encode()
            for value, carried in await self._encode(events):
                if error is not None:
                    unsent += carried
                    continue
                try:
                    sent.append((await producer.send(topic, value, key=key), carried))
                except (KafkaError, OSError) as exc:
                    # Those already handed to the producer are awaited below.
                    error = exc
                    unsent += carried
        results = await asyncio.gather(*(fut for fut, _ in sent), return_exceptions=True)
        failed: list[Event] = []
        delivered = 0
        for (_, carried), result in zip(sent, results):
            if isinstance(result, BaseException):
                failed += carried
                error = error or result
            else:
                delivered += len(carried)
        self.published += delivered
        self._on_published(delivered)
        return failed + unsent, error

    @staticmethod
    async def _encode(events: list[Event]) -> list[tuple[bytes, list[Event]]]:
        """``encode_records``, letting the loop go between parts, so that encoding a
        large batch never holds requests up for long."""
        if len(events) <= PART_EVENTS:
            return encode_records(events)
        parts = []
        for part in parts_of(events):
            parts.append(part)
            await asyncio.sleep(0)
        return join_parts(parts)

    def _requeue(self, batch: list[Event]) -> None:
        if self.spool is not None:
            # The oldest events: back at the head, briefly over the bound; they move
            # to the spool's head if the outage lasts (see _failing).
            self.queue.extendleft(reversed(batch))
            return
        room = self.max_queue - len(self.queue)
        keep = batch[:max(0, room)]
        lost = len(batch) - len(keep)
        self.queue.extendleft(reversed(keep))
        if lost:
            self.dropped += lost
            self._on_dropped(lost)
            log.error("events: queue full, dropped %d events", lost)

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued (up to ``timeout`` seconds), then close the producer."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, KafkaError, OSError):
                self._task.cancel()
            except asyncio.CancelledError:
                pass
        if self._inflight:
            # Cut off mid-send (Kafka down or too slow): not known as delivered, so
            # kept (spooled below) rather than lost.
            self.queue.extendleft(reversed(self._inflight))
            self._inflight = []
        if self.spool is not None:
            if self.queue:
                self._spill()
            self.spool.close()
            if len(self.spool):
                log.warning("events: %d event(s) not delivered at shutdown are kept in the "
                            "spool %s for the next start", len(self.spool), self.spool.directory)
        elif self.queue:
            log.error("events: %d events not delivered at shutdown", len(self.queue))
            self.dropped += len(self.queue)
            self._on_dropped(len(self.queue))
        if self._producer is not None:
            await self._producer.stop()
