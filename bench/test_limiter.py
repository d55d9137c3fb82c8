"""The limiter call against real Valkey: RateGuard's RedisStore (hiredis protocol,
commands of one loop tick pipelined in one write) beside redis-py's asyncio client.

Wall time per round trip by default; with ``--benchmark-timer time.process_time`` the
figures are this process's CPU time, i.e. what the client costs the proxy (Valkey's
own CPU is another process)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from rateguard.limiter.redis_client import RedisClient
from rateguard.limiter.redis_store import SCRIPT, SCRIPT_SHA, RedisStore

from bench.conftest import per_call

BATCH = 100


@pytest.fixture(scope="module")
def store(loop, redis_url):
    client = RedisClient(redis_url, timeout=5.0)
    store = RedisStore(client)
    loop.run_until_complete(store.load())
    yield store
    loop.run_until_complete(client.close())


@pytest.fixture(scope="module")
def redis_py(loop, redis_url):
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url, max_connections=BATCH)
    loop.run_until_complete(client.script_load(SCRIPT))
    yield client
    loop.run_until_complete(client.aclose())


def test_limiter_evalsha_single(benchmark, loop, store, policy):
    """One EVALSHA round trip (sliding window, one limit) through RedisStore.check."""
    decision = benchmark(lambda: loop.run_until_complete(store.check(policy, "key-single")))
    assert decision.allowed


def test_limiter_evalsha_single_two_limits(benchmark, loop, store, policy_two_limits):
    """A policy with two limits (100/s + 5000/h style): still one call, two keys."""
    decision = benchmark(
        lambda: loop.run_until_complete(store.check(policy_two_limits, "key-two")))
    assert decision.allowed


def test_limiter_evalsha_100_concurrent(benchmark, loop, store, policy):
    """100 concurrent checks of 100 keys: the client writes them in one pipelined batch."""
    counter = itertools.count()

    async def batch():
        base = next(counter) * BATCH
        return await asyncio.gather(*(store.check(policy, f"key-{(base + i) % 10_000}")
                                      for i in range(BATCH)))

    decisions = benchmark(lambda: loop.run_until_complete(batch()))
    assert all(d.allowed for d in decisions)
    per_call(benchmark, BATCH)


def test_redis_py_evalsha_single(benchmark, loop, redis_py, policy):
    """Baseline: one EVALSHA of the same script with redis-py's asyncio client."""
    keys = policy.redis_keys("key-redis-py")
    reply = benchmark(lambda: loop.run_until_complete(
        redis_py.evalsha(SCRIPT_SHA, len(keys), *keys, *policy.script_args)))
    assert reply[0] == 1


def test_redis_py_evalsha_100_concurrent(benchmark, loop, redis_py, policy):
    """Baseline: 100 concurrent EVALSHA with redis-py (a pool of connections, no
    pipelining across requests)."""
    async def batch():
        calls = []
        for i in range(BATCH):
            keys = policy.redis_keys(f"key-{i}")
            calls.append(redis_py.evalsha(SCRIPT_SHA, len(keys), *keys, *policy.script_args))
        return await asyncio.gather(*calls)

    replies = benchmark(lambda: loop.run_until_complete(batch()))
    assert all(r[0] == 1 for r in replies)
    per_call(benchmark, BATCH)
