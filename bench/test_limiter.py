"""The limiter call against real Valkey: RateGuard's RedisStore (hiredis protocol,
commands of one loop tick pipelined in one write) beside redis-py's asyncio client.

Wall time per round trip by default; with ``--benchmark-timer time.process_time`` the
figures are this process's CPU time, i.e. what the client costs the proxy (Valkey's
own CPU is another process)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from rateguard.limiter.policy import Policy, parse_limit
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


# -- sliding_log entry naming: this script beside the one shipped at cc96df2 ----------------
# The exact naming adds an INCRBY and a PEXPIRE of the sequence key and a string.format
# per admission. Measured on admissions (the path that writes entries), 100 pipelined
# calls per round over 10,000 keys, so the figure per call is mostly Valkey's own time.

OLD_SCRIPT = (Path(__file__).parent / "baselines" / "limit_cc96df2.lua").read_text()


@pytest.fixture(scope="module")
def log_policy() -> Policy:
    return Policy(id="log", workspace_id="bench", limits=(parse_limit("100000/h"),),
                  algorithm="sliding_log")


def _log_rounds(benchmark, loop, store, sha: str, keys_of) -> None:
    client = store.client
    counter = itertools.count()

    async def batch():
        base = next(counter) * BATCH
        return await asyncio.gather(*(
            client.execute("EVALSHA", sha, *keys_of(f"key-{(base + i) % 10_000}"),
                           "log", 1, 100_000, 3_600_000)
            for i in range(BATCH)))

    loop.run_until_complete(client.execute("CONFIG", "RESETSTAT"))
    replies = benchmark(lambda: loop.run_until_complete(batch()))
    assert all(r[0] == 1 for r in replies)
    per_call(benchmark, BATCH)
    # Valkey's own CPU per call (its commandstats), which a noisy machine moves less
    info = loop.run_until_complete(client.execute("INFO", "commandstats")).decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            benchmark.extra_info["valkey_us_per_call"] = float(fields["usec_per_call"])


def test_sliding_log_naming_exact(benchmark, loop, store, log_policy):
    """This script: members named by exact TIME + a per-key sequence."""
    def keys_of(scope):
        keys = log_policy.redis_keys(scope)
        return (len(keys), *keys)
    _log_rounds(benchmark, loop, store, SCRIPT_SHA, keys_of)


def test_sliding_log_naming_cc96df2(benchmark, loop, store, log_policy):
    """Baseline: the cc96df2 script (members could collide), same keys and calls."""
    sha = loop.run_until_complete(store.client.execute("SCRIPT", "LOAD", OLD_SCRIPT)).decode()

    def keys_of(scope):
        return (1, log_policy.redis_keys("old-" + scope)[0])
    _log_rounds(benchmark, loop, store, sha, keys_of)
