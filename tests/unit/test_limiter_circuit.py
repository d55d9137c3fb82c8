"""The limiter's circuit, failure modes and refusal cache, on a clock the test moves.

The store here is a scripted stand-in for the Store protocol (pure logic under test:
what the limiter does with each kind of answer); the same behaviour against real
Valkey is in tests/integration/test_limiter_isolation.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from rateguard.errors import LimitCallFailed, LimiterUnavailable
from rateguard.limiter import Limiter
from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Decision, Policy, parse_limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedStore:
    """Answers each call with the next item of ``answers``: a Decision or an error."""

    def __init__(self, *, sharded: bool = False) -> None:
        self.sharded = sharded
        self.answers: dict[str, list] = {}
        self.calls: list[str] = []
        self.loads = 0
        self.load_error: Exception | None = None

    async def load(self) -> None:
        self.loads += 1
        if self.load_error:
            raise self.load_error

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        self.calls.append(policy.workspace_id)
        answer = self.answers[policy.workspace_id].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def policy(workspace: str, failure_mode: str = "open") -> Policy:
    return Policy("p", workspace, (parse_limit("10/s"),), failure_mode=failure_mode)


ALLOWED = Decision(True, parse_limit("10/s"), 9, 1000, 0)


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_an_error_answer_fails_that_request_alone(failure_mode):
    store, clock = ScriptedStore(), Clock()
    errors: list[str] = []
    limiter = Limiter(store, MemoryStore(clock=clock), clock=clock,
                      on_error=lambda p: errors.append(p.workspace_id))
    b, a = policy("ws-b", failure_mode), policy("ws-a", "closed")
    store.answers = {"ws-b": [LimitCallFailed("WRONGTYPE Operation against a key")],
                     "ws-a": [ALLOWED]}
    decision_b = await limiter.check(b, "k")
    if failure_mode == "open":
        assert decision_b is not None and decision_b.allowed  # the local limiter decided
    else:
        assert decision_b is None  # the proxy answers 503 for this request
    assert limiter.redis_up  # the circuit stays closed...
    assert await limiter.check(a, "k") is ALLOWED  # ...and A still asks Redis
    assert store.calls == ["ws-b", "ws-a"]
    assert errors == ["ws-b"]


async def test_an_error_answer_is_logged_once_per_policy_per_interval(caplog):
    store, clock = ScriptedStore(), Clock()
    limiter = Limiter(store, clock=clock, log_interval=60)
    b = policy("ws-b")
    store.answers = {"ws-b": [LimitCallFailed("ERR script")] * 5}
    with caplog.at_level(logging.WARNING, logger="rateguard.limiter.limiter"):
        for _ in range(3):
            await limiter.check(b, "k")
        clock.now += 61
        for _ in range(2):
            await limiter.check(b, "k")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("ws-b" in line and "ERR script" in line for line in lines)


async def test_an_unavailable_server_opens_the_circuit_for_everyone_until_a_probe_loads():
    store, clock = ScriptedStore(), Clock()
    states: list[bool] = []
    limiter = Limiter(store, MemoryStore(clock=clock), clock=clock, probe_interval=0.01,
                      on_state=states.append)
    store.answers = {"ws-a": [LimiterUnavailable("connection refused")], "ws-b": []}
    store.load_error = LimiterUnavailable("still down")
    assert (await limiter.check(policy("ws-a"), "k")).allowed  # open: local limiter
    assert not limiter.redis_up and states == [False]
    assert await limiter.check(policy("ws-b", "closed"), "k") is None  # no Redis call
    assert store.calls == ["ws-a"]
    store.load_error = None
    for _ in range(100):
        await asyncio.sleep(0.01)
        if limiter.redis_up:
            break
    assert limiter.redis_up and states == [False, True]
    await limiter.close()


async def test_a_sharded_store_keeps_the_limiter_circuit_closed():
    store, clock = ScriptedStore(sharded=True), Clock()
    limiter = Limiter(store, clock=clock)
    store.answers = {"ws-a": [LimiterUnavailable("shard down"), ALLOWED]}
    assert (await limiter.check(policy("ws-a"), "k")).allowed
    assert limiter.redis_up
    assert await limiter.check(policy("ws-a"), "k") is ALLOWED


async def test_a_refusal_is_replayed_locally_until_its_retry_after():
    store, clock = ScriptedStore(), Clock()
    limiter = Limiter(store, clock=clock)
    refused = Decision(False, parse_limit("10/s"), 0, 800, 800)
    store.answers = {"ws-a": [refused, ALLOWED]}
    p = policy("ws-a")
    assert not (await limiter.check(p, "k")).allowed
    clock.now += 0.5
    again = await limiter.check(p, "k")
    assert not again.allowed and 250 <= again.retry_after_ms <= 301
    assert again.reset_seconds == again.retry_after_seconds == 1
    assert store.calls == ["ws-a"]  # the second refusal cost no call
    clock.now += 0.31
    assert await limiter.check(p, "k") is ALLOWED


async def test_an_edited_policy_does_not_inherit_the_old_refusals():
    """The refusal cache is keyed by everything that defines the policy."""
    store, clock = ScriptedStore(), Clock()
    limiter = Limiter(store, clock=clock)
    store.answers = {"ws-a": [Decision(False, parse_limit("10/s"), 0, 900, 900), ALLOWED]}
    assert not (await limiter.check(policy("ws-a"), "k")).allowed
    edited = Policy("p", "ws-a", (parse_limit("1000/s"),))
    assert await limiter.check(edited, "k") is ALLOWED
