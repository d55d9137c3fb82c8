"""Events from the proxy's hot path to Kafka, without the request ever waiting.

``publish`` appends the event to its workspace's pending list and returns; every
PART_EVENTS events of a workspace are encoded at once (one ``orjson`` call) into a
part that goes to a bounded in-memory queue (a deque). So a queued event is bytes
inside a tuple the garbage collector does not track, not two objects (an Event and
its ``__dict__``) it walks on every young collection: at one connection those
collections came every ~500 requests and made much of the latency tail. A background
task lingers ``linger_ms`` (or until ROUND_EVENTS events are queued, whichever comes
first), seals what is pending, and hands the parts to aiokafka's producer as JSON-array
records. A produce round costs the proxy's loop about 0.3 ms whatever it carries, in
several slices that each delay the requests arriving meanwhile: fewer, fuller rounds
keep them out of the latency tail, and the size bound keeps the longest slice
(compressing the batch, ~0.6 us an event) near a millisecond. Parts a failed send
leaves undelivered go back to the head of the queue and are retried with backoff.

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

from rateguard.events.schema import PART_EVENTS, Event, Part, events_in, make_part, records_of
from rateguard.events.spool import Spool

log = logging.getLogger(__name__)

ROUND_EVENTS = 2000  # the most a produce round carries; this many queued end the linger
DROP_LOG_SECONDS = 10.0  # at most one drop line per this interval (with a count)


def _noop(count: int) -> None:
    pass


class EventPublisher:
    def __init__(
        self, brokers: tuple[str, ...], topic: str, *, max_queue: int = 100_000,
        linger_ms: int = 500, batch_bytes: int = 512 * 1024, compression: str = "zstd",
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
        self._inflight: list[Part] = []  # the batch being sent
        self._down_since: float | None = None
        self._drops_unlogged = 0
        self._drop_logged_at = 0.0
        self.brokers = brokers
        self.topic = topic
        self.max_queue = max_queue
        self.queue: deque[Part] = deque()  # sealed parts, oldest first
        self._pending: dict[str, list[Event]] = {}  # per workspace, not yet a part
        self.queued = 0  # events in the queue and pending (the bound)
        self.max_record = min(256 * 1024, batch_bytes // 2)
        self._wakeup = asyncio.Event()  # the first event after an empty queue
        self._full = asyncio.Event()  # ROUND_EVENTS queued (or stopping): end the linger
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
        if self._spooling or self.queued >= self.max_queue:
            spool = self.spool
            if spool is not None and spool.append(event):
                if not self._spooling:
                    self._spooling = True
                    self._wakeup.set()
                return
            self._drop(1, "the event spool is full" if spool else "the event queue is full")
            return
        workspace_id = event.workspace_id
        pending = self._pending.get(workspace_id)
        if pending is None:
            pending = self._pending[workspace_id] = []
        pending.append(event)
        self.queued += 1
        if len(pending) >= PART_EVENTS:
            del self._pending[workspace_id]
            self.queue.append(make_part(pending))
        if self.queued == 1:
            self._wakeup.set()
        elif self.queued == ROUND_EVENTS:
            self._full.set()

    def _seal(self) -> None:
        """Every pending list into a part at the queue's tail."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self.queue.extend(map(make_part, pending.values()))

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
        parts = spool.take()
        self.queue.extend(parts)
        self.queued += events_in(parts)
        if not len(spool):
            self._spooling = False
        return True

    def _failing(self) -> None:
        """Kafka failed again: past ``spool_after`` seconds, the queue goes to disk."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self.connected = False
        if self.spool is not None and self.queued and now - self._down_since >= self.spool_after:
            self._spill()

    def _spill(self) -> None:
        self._seal()
        parts = list(self.queue)
        self.queue.clear()
        self.queued = 0
        lost = self.spool.prepend(parts)
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
            if not self.queued and not self._refill():
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._inflight = self._take(ROUND_EVENTS)
            try:
                failed, exc = await self._send(producer, batch)
            except (KafkaError, OSError) as error:
                failed, exc = batch, error
            self._inflight = []
            if not failed:
                backoff = 0.2
                if self.queued < ROUND_EVENTS and not self._stopping:
                    # Let events gather: fewer, larger records cost the proxy far less
                    # than one produce request per few events.
                    await self._linger()
                if self._down_since is not None:
                    log.warning("events: kafka is back after %.1fs; %d queued, %d spooled",
                                time.monotonic() - self._down_since, self.queued,
                                self.spooled)
                    self._down_since = None
                self.connected = True
            else:
                self._requeue(failed)
                self._failing()
                log.warning("events: publish failed (%s); %d queued, retrying in %.1fs",
                            exc, self.queued, backoff)
                if self._stopping:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _linger(self) -> None:
        """Wait ``linger`` seconds, or less if ROUND_EVENTS events are queued or the
        publisher stops."""
        full = self._full
        full.clear()
        timer = asyncio.get_running_loop().call_later(self.linger, full.set)
        try:
            await full.wait()
        finally:
            timer.cancel()

    def _take(self, limit: int) -> list[Part]:
        """The oldest parts, about ``limit`` events (at least one part)."""
        self._seal()
        queue = self.queue
        parts = []
        count = 0
        while queue and count < limit:
            part = queue.popleft()
            parts.append(part)
            count += part[2]
        self.queued -= count
        return parts

    async def _send(self, producer: AIOKafkaProducer,
                    batch: list[Part]) -> tuple[list[Part], BaseException | None]:
        """Send a batch as one or more records per workspace; return the parts that
        were not delivered and why."""
        topic = self.topic
        by_workspace: dict[str, list[Part]] = {}
        for part in batch:
            group = by_workspace.get(part[0])
            if group is None:
                group = by_workspace[part[0]] = []
            group.append(part)
        sent: list[tuple[asyncio.Future, list[Part]]] = []
        unsent: list[Part] = []
        error: BaseException | None = None
        for workspace_id, parts in by_workspace.items():
            key = workspace_id.encode()
            for value, carried in records_of(parts, self.max_record):
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
        failed: list[Part] = []
        delivered = 0
        for (_, carried), result in zip(sent, results):
            if isinstance(result, BaseException):
                failed += carried
                error = error or result
            else:
                delivered += events_in(carried)
        self.published += delivered
        self._on_published(delivered)
        return failed + unsent, error

    def _requeue(self, batch: list[Part]) -> None:
        if self.spool is not None:
            # The oldest events: back at the head, briefly over the bound; they move
            # to the spool's head if the outage lasts (see _failing).
            self.queue.extendleft(reversed(batch))
            self.queued += events_in(batch)
            return
        room = self.max_queue - self.queued
        keep = []
        for part in batch:
            if part[2] > room:
                break
            keep.append(part)
            room -= part[2]
        kept = events_in(keep)
        lost = events_in(batch) - kept
        self.queue.extendleft(reversed(keep))
        self.queued += kept
        if lost:
            self.dropped += lost
            self._on_dropped(lost)
            log.error("events: queue full, dropped %d events", lost)

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued (up to ``timeout`` seconds), then close the producer."""
        self._stopping = True
        self._wakeup.set()
        self._full.set()
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
            self.queued += events_in(self._inflight)
            self._inflight = []
        if self.spool is not None:
            if self.queued:
                self._spill()
            self.spool.close()
            if len(self.spool):
                log.warning("events: %d event(s) not delivered at shutdown are kept in the "
                            "spool %s for the next start", len(self.spool), self.spool.directory)
        elif self.queued:
            log.error("events: %d events not delivered at shutdown", self.queued)
            self.dropped += self.queued
            self._on_dropped(self.queued)
        if self._producer is not None:
            await self._producer.stop()
