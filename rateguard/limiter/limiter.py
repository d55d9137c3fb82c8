"""The limiter: a shared store first, each policy's failure mode when it cannot answer.

A scope value that the store refused is refused locally until its retry-after has
passed: until then the store would refuse it too (counts only grow; a refusal consumes
nothing), so abusive clients cost no Redis round trip and limits stay exact. The
deadline is taken from the moment the call was sent, so it never outlasts the store's.

Two kinds of failure, kept apart so that no workspace can change another's decisions:

- The store is unavailable (``LimiterUnavailable``: connection refused, reset or timed
  out, server loading). With one Redis server this opens the circuit: while it is open
  no request waits on Redis and every policy uses its failure mode (``open``: the
  per-replica memory limiter; ``closed``: reject); a background probe closes it as soon
  as Redis answers and the script is loaded. On Redis Cluster the store keeps a circuit
  per shard (cluster_store.py), so one dead shard leaves the others' workspaces alone.
- One call failed (``LimitCallFailed``: a script error, WRONGTYPE, OOM for one key).
  That request alone gets its policy's failure mode; the circuit stays closed. It is
  logged at most once per policy per ``log_interval`` and reported to ``on_error``
  with the workspace id (the proxy counts it in a metric).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from rateguard.errors import LimitCallFailed, LimiterUnavailable
from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Decision, Policy
from rateguard.limiter.store import Store

log = logging.getLogger(__name__)

MAX_DENIED = 100_000  # remembered refusals per policy
MAX_POLICIES = 10_000  # policies with remembered refusals or logged errors


class Limiter:
    def __init__(self, store: Store, fallback: MemoryStore | None = None, *,
                 probe_interval: float = 0.5, log_interval: float = 60.0,
                 on_state: Callable[[bool], None] | None = None,
                 on_error: Callable[[Policy], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.fallback = fallback if fallback is not None else MemoryStore()
        self.probe_interval = probe_interval
        self.log_interval = log_interval
        self.redis_up = True
        self._probe: asyncio.Task | None = None
        self._on_state = on_state or (lambda up: None)
        self._on_error = on_error or (lambda policy: None)
        self._clock = clock
        self._last_shard_log = -1e18
        # policy fingerprint -> scope value -> (until, sent, decision)
        self._denied: dict[str, dict[str, tuple]] = {}
        self._error_logged: dict[str, float] = {}  # policy fingerprint -> last log time

    async def start(self) -> None:
        try:
            await self.store.load()
        except (LimiterUnavailable, OSError) as exc:
            self._trip(exc)

    async def check(self, policy: Policy, scope_value: str) -> Decision | None:
        """The decision, or None when the store cannot decide and the policy fails
        closed."""
        if self.redis_up:
            now = self._clock()
            denied = self._denied.get(policy.fingerprint)
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
            except LimitCallFailed as exc:
                self._call_failed(policy, exc)
            except (LimiterUnavailable, OSError) as exc:
                if self.store.sharded:
                    self._shard_failed(exc)  # the store skips that shard for a while
                else:
                    self._trip(exc)
            else:
                if not decision.allowed and decision.retry_after_ms > 0:
                    self._remember(policy, scope_value, now, decision)
                return decision
        if policy.failure_mode == "open":
            return await self.fallback.check(policy, scope_value)
        return None

    def _remember(self, policy: Policy, scope_value: str, now: float,
                  decision: Decision) -> None:
        denied = self._denied.get(policy.fingerprint)
        if denied is None:
            if len(self._denied) >= MAX_POLICIES:
                self._denied.clear()
            denied = self._denied[policy.fingerprint] = {}
        elif len(denied) >= MAX_DENIED:
            denied.clear()
        denied[scope_value] = (now + decision.retry_after_ms / 1000.0, now, decision)

    def _call_failed(self, policy: Policy, exc: Exception) -> None:
        self._on_error(policy)
        now = self._clock()
        logged = self._error_logged
        if now - logged.get(policy.fingerprint, -1e18) >= self.log_interval:
            if len(logged) >= MAX_POLICIES:
                logged.clear()
            logged[policy.fingerprint] = now
            log.warning("limiter: workspace %s policy %s: redis refused the call (%s); "
                        "its requests use failure mode %s", policy.workspace_id, policy.id,
                        exc, policy.failure_mode)

    def _shard_failed(self, exc: Exception) -> None:
        now = self._clock()
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
