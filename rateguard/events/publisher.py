"""Events from the proxy's hot path to Kafka, without the request ever waiting.

``publish`` appends to a bounded in-memory queue (a deque) and returns. A background
task drains the queue into aiokafka's producer, which batches by ``linger_ms`` and
``batch_bytes``. Events a failed send leaves undelivered go back to the head of the
queue and are retried with backoff. When the queue is full, new events are dropped
and counted (``on_dropped``), never silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from rateguard.events.schema import Event, encode_records

log = logging.getLogger(__name__)


def _noop(count: int) -> None:
    pass


class EventPublisher:
    def __init__(
        self, brokers: tuple[str, ...], topic: str, *, max_queue: int = 100_000,
        linger_ms: int = 20, batch_bytes: int = 512 * 1024, compression: str = "lz4",
        on_published: Callable[[int], None] = _noop, on_dropped: Callable[[int], None] = _noop,
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.max_queue = max_queue
        self.queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._producer_args = dict(
            bootstrap_servers=",".join(brokers), linger_ms=linger_ms,
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
        if len(queue) >= self.max_queue:
            self.dropped += 1
            self._on_dropped(1)
            return
        queue.append(event)
        if len(queue) == 1:
            self._wakeup.set()

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
                log.warning("events: kafka unavailable (%s), retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run(self) -> None:
        self._producer = producer = await self._connect()
        backoff = 0.2
        while True:
            if not self.queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take(5000)
            try:
                failed, exc = await self._send(producer, batch)
            except (KafkaError, OSError) as error:
                failed, exc = batch, error
            if not failed:
                backoff = 0.2
            else:
                self._requeue(failed)
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
            for value, carried in encode_records(events):
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

    def _requeue(self, batch: list[Event]) -> None:
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
        if self.queue:
            log.error("events: %d events not delivered at shutdown", len(self.queue))
            self._on_dropped(len(self.queue))
        if self._producer is not None:
            await self._producer.stop()
