"""The Lua limiter against real Valkey."""

from __future__ import annotations

import asyncio

import pytest

from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Policy, parse_limit
from rateguard.limiter.redis_client import RedisClient
from rateguard.limiter.redis_store import RedisStore
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration


def policy(*limits: str, algorithm: str = "sliding_log") -> Policy:
    return Policy(unique("p"), unique("ws"), tuple(parse_limit(x) for x in limits),
                  algorithm=algorithm)


@pytest.fixture
async def store(redis_url):
    client = RedisClient(redis_url)
    store = RedisStore(client)
    await store.load()
    yield store
    await client.close()


@pytest.mark.parametrize("algorithm", ["sliding_log", "sliding_window"])
async def test_admits_the_limit_then_rejects_with_retry_after(store, algorithm):
    p = policy("5/min", algorithm=algorithm)
    decisions = [await store.check(p, "k") for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    # sliding_log: the oldest entry expires within the window. sliding_window: the
    # full current window becomes the weighted previous one, which must decay to 4/5
    # of itself before there is room: up to window * (1 + 1/limit).
    bound = 60_000 if algorithm == "sliding_log" else 72_000
    assert 0 < decisions[-1].retry_after_ms <= bound
    assert decisions[0].reset_ms <= 60_000


async def test_pipelined_calls_are_all_counted(store):
    p = policy("50/min")
    decisions = await asyncio.gather(*[store.check(p, "k") for _ in range(80)])
    assert sum(d.allowed for d in decisions) == 50


async def test_scope_values_count_separately_and_keys_are_hash_tagged(store, redis_url):
    p = policy("1/min")
    assert (await store.check(p, "a")).allowed
    assert (await store.check(p, "b")).allowed
    assert not (await store.check(p, "a")).allowed
    keys = await store.client.execute("KEYS", f"rg:{{{p.workspace_id}}}:rl:{p.id}:*")
    prefix = f"rg:{{{p.workspace_id}}}:rl:{p.id}:log:key"
    assert sorted(k.decode() for k in keys) == [
        f"{prefix}:a:60s", f"{prefix}:a:seq", f"{prefix}:b:60s", f"{prefix}:b:seq"]
    for key in keys:
        ttl = await store.client.execute("PTTL", key)
        assert 0 < ttl <= 60_000


async def test_a_rejecting_limit_consumes_nothing_from_the_others(store):
    p = policy("2/s", "10/min")
    results = [await store.check(p, "k") for _ in range(6)]
    assert [d.allowed for d in results] == [True, True, False, False, False, False]
    await asyncio.sleep(1.05)
    later = [await store.check(p, "k") for _ in range(3)]
    assert [d.allowed for d in later] == [True, True, False]
    # 4 admitted in total: the 4 rejected calls did not use the minute's budget
    assert later[1].remaining == 0 and later[1].limit == parse_limit("2/s")
    minute = await store.client.execute("ZCARD", p.redis_keys("k")[1])
    assert minute == 4


async def test_script_is_reloaded_after_script_flush(store):
    p = policy("3/min")
    assert (await store.check(p, "k")).allowed
    await store.client.execute("SCRIPT", "FLUSH")
    assert (await store.check(p, "k")).allowed


async def test_lua_and_memory_store_agree_within_one_window(store):
    """The per-replica fallback applies the same arithmetic."""
    for algorithm in ("sliding_log", "sliding_window"):
        p = policy("7/h", "3/min", algorithm=algorithm)
        memory = MemoryStore()
        redis_decisions = [await store.check(p, "k") for _ in range(5)]
        memory_decisions = [await memory.check(p, "k") for _ in range(5)]
        assert [d.allowed for d in redis_decisions] == [d.allowed for d in memory_decisions]
        assert [d.remaining for d in redis_decisions] == [d.remaining for d in memory_decisions]
        assert [d.limit for d in redis_decisions] == [d.limit for d in memory_decisions]


async def test_refused_scope_values_are_refused_locally_until_retry_after(store):
    """The proxy's limiter remembers a refusal until its retry-after: no Redis call,
    and the limit stays exact (it admits again as soon as Redis would)."""
    from rateguard.limiter import Limiter

    limiter = Limiter(store, MemoryStore())
    p = policy("2/s")
    assert [(await limiter.check(p, "k")).allowed for _ in range(2)] == [True, True]
    refused = await limiter.check(p, "k")
    assert not refused.allowed and refused.retry_after_ms <= 1000
    calls_before = await store.client.execute("INFO", "commandstats")
    again = await limiter.check(p, "k")
    calls_after = await store.client.execute("INFO", "commandstats")

    def evalsha_calls(info: bytes) -> int:
        for line in info.decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    assert not again.allowed and again.remaining == 0
    assert evalsha_calls(calls_after) == evalsha_calls(calls_before)
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.05)
    assert (await limiter.check(p, "k")).allowed
