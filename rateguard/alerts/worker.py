"""The alerts sidecar worker: leader election, periodic evaluation, and delivery of
notifications from the outbox.

Leadership: every replica opens one PostgreSQL connection and tries
``pg_try_advisory_lock`` on it every ``leader_poll`` seconds. The one that gets the lock
is the leader and does everything on that same connection: PostgreSQL releases the lock
only when the connection ends (the process died, or its network did), so whatever the
leader commits, it commits while still leader. A standby takes over within
``leader_poll`` seconds of the leader's connection ending (at once when its process
dies; within about 10 s, through TCP keepalives set on the connection, when its machine
or network does). The leader checks its connection every second (5 s timeout) and stops
sending as soon as it is gone, before PostgreSQL hands the lock to another replica.

Notifications once: a transition and its outbox rows (one per channel, unique per
transition and channel) commit in one transaction; each delivery attempt is recorded,
and a delivered row is marked in the same transaction as its successful attempt. A new
leader carries on from the outbox: what was delivered is not sent again; only an attempt
that was cut off between the send and its record (the leader died right then) is sent
again, with the same ``X-RateGuard-Delivery`` id so a receiver can drop the repeat.

Retries: a failed attempt is retried after ``retry_base * 2**(n-1)`` seconds (capped at
``retry_cap``), up to ``max_attempts``; each delivery is its own task with its own
timeout, so one failing channel never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import aiohttp

from rateguard.alerts import evaluator, notify
from rateguard.alerts.store import decrypt_channel, record_attempt
from rateguard.db.connection import connect
from rateguard.net.egress import CheckedResolver, from_settings
from rateguard.settings import Settings

log = logging.getLogger(__name__)

# pg advisory lock key shared by every alerts replica (per database).
LOCK_ID = int.from_bytes(hashlib.sha256(b"rateguard alerts leader").digest()[:8], "big") >> 1


class _Leader:
    """The lock-holding connection, used by one coroutine at a time."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self):
        async with self.lock:
            yield self.conn


class AlertsWorker:
    name = "alerts"

    def __init__(self, settings: Settings, clickhouse=None, *, interval: float | None = None,
                 retry_base: float = 2.0, retry_cap: float = 300.0, max_attempts: int = 10,
                 delivery_timeout: float = 10.0, leader_poll: float = 1.0,
                 batch_size: int = 500, dispatch_poll: float = 0.5) -> None:
        settings.require("DATABASE_URL", "CLICKHOUSE_URL")
        self.settings = settings
        self.clickhouse = clickhouse
        self._own_clickhouse = clickhouse is None
        self.interval = interval or settings.ALERTS_INTERVAL_SECONDS
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.max_attempts = max_attempts
        self.delivery_timeout = delivery_timeout
        self.leader_poll = leader_poll
        self.batch_size = batch_size
        self.dispatch_poll = dispatch_poll
        self.keyring = None
        if settings.ENCRYPTION_KEY:
            from rateguard.crypto import KeyRing
            self.keyring = KeyRing(settings.ENCRYPTION_KEY)
        # the proxy's SSRF guard for webhook and Slack deliveries
        self.guard = from_settings(settings)
        self.role = "starting"
        self.evaluations = 0
        self.last_evaluation: float | None = None
        self.last_error: str | None = None
        self.delivered = 0
        self.failed_attempts = 0
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conn = None
        self._inflight: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._failing: str | None = None  # the error logged for the current outage

    # -- the worker interface -----------------------------------------------------------

    async def start(self) -> None:
        if self.clickhouse is None:
            from rateguard.analytics.clickhouse import ClickHouse

            s = self.settings
            self.clickhouse = ClickHouse(s.CLICKHOUSE_URL, s.CLICKHOUSE_DATABASE,
                                         s.ANALYTICS_TTL_DAYS)
        # Deliveries connect only to addresses the egress policy accepted, resolved once
        # (no window between the check and aiohttp's own lookup for a name to rebind).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=CheckedResolver(self.guard)))
        self._task = asyncio.ensure_future(self._run())
        log.info("alerts: evaluating every %gs; standing by for leadership", self.interval)

    async def stop(self) -> None:
        """Stop: no new evaluation or delivery starts; deliveries under way get up to
        ``delivery_timeout`` to finish and be recorded (so the next leader does not send
        them again); then the connection closes and the lock passes on."""
        self._stopping = True
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()),
                               timeout=self.delivery_timeout + 1)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_conn()
        if self._session is not None:
            await self._session.close()
        if self._own_clickhouse and self.clickhouse is not None:
            await self.clickhouse.close()

    def health(self) -> dict:
        running = self._task is not None and not self._task.done()
        fresh = self.role != "leader" or (
            self.last_evaluation is not None
            and time.time() - self.last_evaluation < max(3 * self.interval, 30))
        return {"ok": running and (fresh or self.evaluations == 0), "role": self.role,
                "evaluations": self.evaluations, "last_evaluation": self.last_evaluation,
                "in_flight": len(self._inflight), "delivered": self.delivered,
                "failed_attempts": self.failed_attempts, "last_error": self.last_error}

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    # -- leadership ---------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self.settings.DATABASE_URL)
                    # If the leader's machine or network dies (no FIN), PostgreSQL finds
                    # the connection dead, and releases the lock, within about 10 s.
                    await self._conn.execute(
                        "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;"
                        " SET tcp_keepalives_count = 2")
                leading = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                                    LOCK_ID)
                self._failing = None
                if leading:
                    log.info("alerts: leader now")
                    self.role = "leader"
                    await self._lead(_Leader(self._conn))
                else:
                    self.role = "standby"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                # PostgreSQL down: one line when it starts, not one per leader_poll.
                if self.last_error != self._failing:
                    log.warning("alerts: %s", self.last_error)
                self._failing = self.last_error
                await self._close_conn()
            finally:
                if self.role == "leader":
                    if self._stopping:  # a deliberate stop hands the lock on: no warning
                        log.info("alerts: leadership released (stopping)")
                    else:
                        log.warning("alerts: no longer leader")
                    self.role = "standby"
                    await self._close_conn()  # releases the lock if the connection lives
            await asyncio.sleep(self.leader_poll)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    async def _lead(self, leader: _Leader) -> None:
        tasks = [asyncio.ensure_future(self._evaluate_loop(leader)),
                 asyncio.ensure_future(self._dispatch_loop(leader)),
                 asyncio.ensure_future(self._heartbeat(leader))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in [*tasks, *self._inflight.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *self._inflight.values(), return_exceptions=True)
            self._inflight.clear()

    async def _heartbeat(self, leader: _Leader) -> None:
        while True:
            await asyncio.sleep(1.0)
            async with leader.use() as conn:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)

    # -- evaluation ---------------------------------------------------------------------

    async def _evaluate_loop(self, leader: _Leader) -> None:
        while True:
            started = time.monotonic()
            try:
                if not self._stopping:
                    await self.evaluate_once(leader)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if leader.conn.is_closed():
                    raise
                self.last_error = f"evaluation: {type(exc).__name__}: {exc}"
                log.warning("alerts: %s", self.last_error)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def evaluate_once(self, leader: _Leader) -> list[dict]:
        async with leader.use() as conn:
            rules = await evaluator.enabled_rules(conn)
        transitions: list[dict] = []
        for batch in evaluator.chunks(list(rules), self.batch_size):
            try:
                aggs = await evaluator.aggregates(self.clickhouse,
                                                  self.settings.CLICKHOUSE_DATABASE, batch)
            except Exception as exc:  # ClickHouse down: states stay as they are
                self.last_error = f"clickhouse: {type(exc).__name__}: {exc}"
                log.warning("alerts: %s", self.last_error)
                continue
            async with leader.use() as conn, conn.transaction():
                transitions += await evaluator.apply(conn, [r["id"] for r in batch], aggs)
        self.evaluations += 1
        self.last_evaluation = time.time()
        if any(t["notify"] for t in transitions):
            self._wake.set()
        return transitions

    # -- delivery -----------------------------------------------------------------------

    async def _dispatch_loop(self, leader: _Leader) -> None:
        while True:
            self._wake.clear()
            async with leader.use() as conn:
                rows = await conn.fetch(
                    "SELECT o.id AS outbox_id, o.attempts, o.payload, c.* FROM"
                    " notification_outbox o JOIN notification_channels c ON c.id = o.channel_id"
                    " WHERE o.status = 'pending' AND o.kind <> 'test'"
                    " AND o.next_attempt_at <= now() AND NOT (o.id = ANY($1))"
                    " ORDER BY o.id LIMIT 500", list(self._inflight))
            for row in rows:
                if self._stopping:
                    break
                self._inflight[row["outbox_id"]] = asyncio.ensure_future(
                    self._deliver(leader, row))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.dispatch_poll)

    def backoff(self, attempt: int) -> float:
        """Seconds before the attempt after failed attempt number ``attempt``."""
        return min(self.retry_base * 2 ** (attempt - 1), self.retry_cap)

    async def _deliver(self, leader: _Leader, row) -> None:
        outbox_id, attempt = row["outbox_id"], row["attempts"] + 1
        if leader.conn.is_closed():
            # The lock went with the connection: another replica may be sending this
            # row already, and this one could not record the attempt anyway.
            self._inflight.pop(outbox_id, None)
            return
        try:
            try:
                channel = decrypt_channel(row, self.keyring)
            except Exception as exc:
                result = notify.Result(False, None, f"channel secret: {exc}")
            else:
                result = await notify.deliver(channel, row["payload"], str(outbox_id),
                                              self._session, self.delivery_timeout,
                                              self.guard)
            final = attempt >= self.max_attempts
            async with leader.use() as conn, conn.transaction():
                await record_attempt(conn, outbox_id, attempt, result, final=final,
                                     retry_in=self.backoff(attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the channel was deleted meanwhile
            self.last_error = f"delivery {outbox_id}: {type(exc).__name__}: {exc}"
            log.warning("alerts: %s", self.last_error)
        else:
            if result.ok:
                self.delivered += 1
            else:
                self.failed_attempts += 1
                log.warning("alerts: delivery %d to channel %s, attempt %d: %s%s", outbox_id,
                            row["id"], attempt, result.error,
                            " (giving up)" if final else
                            f" (retry in {self.backoff(attempt):g}s)")
        finally:
            self._inflight.pop(outbox_id, None)
            self._wake.set()
