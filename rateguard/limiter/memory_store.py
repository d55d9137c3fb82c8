"""A per-replica limiter in process memory: the fallback of failure mode ``open``.

It applies the same policy with the same algorithms, but each replica counts alone,
so N replicas admit up to N times the limit while Redis is unreachable. Time is the
local monotonic clock. Memory is bounded: the least recently used counters are
evicted past ``max_keys``.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict
from typing import Callable

from rateguard.limiter.policy import Decision, Policy


class MemoryStore:
    def __init__(self, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._counters: OrderedDict[str, list] = OrderedDict()

    def _state(self, key: str, default: Callable[[], list]) -> list:
        counters = self._counters
        state = counters.get(key)
        if state is None:
            state = counters[key] = default()
            if len(counters) > self.max_keys:
                counters.popitem(last=False)
        else:
            counters.move_to_end(key)
        return state

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        return self.check_now(policy, scope_value, self._clock() * 1000.0)

    def check_now(self, policy: Policy, scope_value: str, now: float) -> Decision:
        """The same arithmetic as lua/limit.lua, at time ``now`` in milliseconds."""
        keys = policy.redis_keys(scope_value)
        sliding_log = policy.algorithm == "sliding_log"
        plans = []
        best = None  # (retry, index, remaining, reset)
        allowed = True
        for i, (limit, key) in enumerate(zip(policy.limits, keys)):
            window, count = limit.window_ms, limit.count
            retry = None
            if sliding_log:
                log = self._state(key, list)
                del log[:bisect.bisect_right(log, now - window)]
                used = len(log)
                reset = log[0] + window - now if log else window
                if used + 1 > count:
                    retry = log[used - count] + window - now
                plans.append((log, None))
            else:
                state = self._state(key, lambda: [-1, 0, 0])
                index = math.floor(now / window)
                cur = prev = 0
                if state[0] == index:
                    cur, prev = state[1], state[2]
                elif state[0] == index - 1:
                    prev = state[1]
                elapsed = now - index * window
                used = prev * (window - elapsed) / window + cur
                reset = window - elapsed
                if used + 1 > count:
                    if cur + 1 <= count and prev > 0:
                        retry = window - (count - cur - 1) * window / prev - elapsed
                    else:
                        extra = max(0.0, window * (1 - (count - 1) / cur)) if cur else 0.0
                        retry = window - elapsed + extra
                plans.append((state, (index, cur, prev)))
            remaining = count - used - 1
            if retry is not None:
                allowed = False
                if best is None or best[0] is None or retry > best[0]:
                    best = (retry, i, 0, retry)  # on a refusal, reset = retry-after
            elif allowed and (best is None or remaining < best[2]):
                best = (None, i, remaining, reset)
        if allowed:
            for state, sw in plans:
                if sw is None:
                    state.append(now)
                else:
                    state[0], state[1], state[2] = sw[0], sw[1] + 1, sw[2]
        retry, index, remaining, reset = best
        return Decision(allowed, policy.limits[index], max(0, math.floor(remaining)),
                        math.ceil(reset), 0 if allowed else math.ceil(retry))
