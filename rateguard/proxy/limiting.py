"""The proxy's limiter: Redis first, the policy's failure mode when Redis cannot answer.

A scope value that Redis refused is refused locally until its retry-after has passed:
until then Redis would refuse it too (counts only grow; a refusal consumes nothing), so
abusive clients cost no Redis round trip and limits stay exact. The deadline is taken
from the moment the call was sent, so it never outlasts Redis's own.

With one Redis server, a failed call opens the circuit: while it is open no request waits on Redis; requests
go straight to the fallback (failure mode ``open``: the per-replica memory limiter;
``closed``: reject). A background probe closes the circuit as soon as Redis answers
again and the script is loaded. On Redis Cluster the store keeps a circuit per shard
(limiter/cluster_store.py), so one dead shard leaves the others' workspaces alone.

The store is a RedisStore or a ClusterStore: ``load()``, ``check(policy, scope)``,
``close()`` and ``sharded``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rateguard.errors import LimiterUnavailable
from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Decision, Policy
from rateguard.limiter.redis_client import RedisReplyError

log = logging.getLogger(__name__)

MAX_DENIED = 100_000  # remembered refusals per policy


class Limiter:
    def __init__(self, store, fallback: MemoryStore, *,
                 probe_interval: float = 0.5, on_state=None) -> None:
        self.store = store
        self.fallback = fallback
        self.probe_interval = probe_interval
        self.redis_up = True
        self._probe: asyncio.Task | None = None
        self._on_state = on_state or (lambda up: None)
        self._last_shard_log = 0.0

    async def start(self) -> None:
        try:
            await self.store.load()
        except (LimiterUnavailable, OSError, RedisReplyError) as exc:
            self._trip(exc)

    async def check(self, policy: Policy, scope_value: str) -> Decision | None:
        """The decision, or None when Redis is unavailable and the policy fails closed."""
        if self.redis_up:
            denied = policy.denied
            now = time.monotonic()
            if denied:
                entry = denied.get(scope_value)
                if entry is not None:
                    until, sent, decision = entry
                    if now < until:
                        reset = max(0, decision.reset_ms - int((now - sent) * 1000))
                        return Decision(False, decision.limit, 0, reset,
                                        int((until - now) * 1000) + 1)
                    del denied[scope_value]
            try:
                decision = await self.store.check(policy, scope_value)
            except (LimiterUnavailable, OSError, RedisReplyError) as exc:
                if self.store.sharded:
                    self._shard_failed(exc)  # the store skips that shard for a while
                else:
                    self._trip(exc)
            else:
                if not decision.allowed and decision.retry_after_ms > 0:
                    if len(denied) >= MAX_DENIED:
                        denied.clear()
                    denied[scope_value] = (now + decision.retry_after_ms / 1000.0, now, decision)
                return decision
        if policy.failure_mode == "open":
            return await self.fallback.check(policy, scope_value)
        return None

    def _shard_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_shard_log > 5.0:
            self._last_shard_log = now
            log.warning("limiter: %s; its workspaces use their failure modes", exc)

    def _trip(self, exc: Exception) -> None:
        if self.redis_up:
            log.warning("limiter: redis unavailable, using failure modes: %s", exc)
            self.redis_up = False
            self._on_state(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.store.load()
            except Exception:
                continue
            self.redis_up = True
            self._on_state(True)
            log.warning("limiter: redis is back")
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.store.close()
