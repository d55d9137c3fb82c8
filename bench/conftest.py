"""Fixtures of the micro-benchmarks: real Valkey and a real Kafka-protocol broker
(embedded, or those REDIS_URL / KAFKA_BROKERS name), a uvloop event loop, and a
config snapshot shaped like a real one.

The micro-benchmarks are not tests: they live outside setup.cfg's testpaths and run
only when asked for (see bench/README.md):

    .venv/bin/python -m pytest bench -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rateguard.limiter.policy import Policy, parse_limit
from rateguard.snapshot.keys import hash_key, new_key
from rateguard.snapshot.model import Api, ApiKey, Snapshot, Upstream

N_KEYS = 10_000
N_APIS = 50


# The same real servers as the test suite (embedded, or REDIS_URL / KAFKA_BROKERS).
from tests.conftest import kafka_brokers, redis_url, workdir  # noqa: E402,F401


def per_call(benchmark, calls: int) -> None:
    """Per-call figures of a benchmark whose round makes ``calls`` calls, in its
    extra_info (nothing under ``--benchmark-disable``, which keeps no stats)."""
    benchmark.extra_info["calls_per_round"] = calls
    if benchmark.stats is None:
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["per_call_us"] = round(mean / calls * 1e6, 3)
    benchmark.extra_info["calls_per_second"] = round(calls / mean)


@pytest.fixture(scope="session")
def loop():
    """One uvloop loop for the session; benchmarks drive it with run_until_complete."""
    try:
        import uvloop
        event_loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(event_loop.shutdown_asyncgens())
    event_loop.close()


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The default scenario's policy: a sliding window nothing ever exceeds."""
    return Policy(id="huge", workspace_id="bench", limits=(parse_limit("1000000000/s"),))


@pytest.fixture(scope="session")
def policy_two_limits() -> Policy:
    return Policy(id="two", workspace_id="bench",
                  limits=(parse_limit("1000000000/s"), parse_limit("1000000000/h")))


@pytest.fixture(scope="session")
def plain_keys() -> list[str]:
    return [new_key() for _ in range(N_KEYS)]


@pytest.fixture(scope="session")
def snapshot(plain_keys, policy) -> Snapshot:
    """50 APIs over two hosts and the catch-all, 10,000 keys, one policy."""
    apis = []
    for i in range(N_APIS):
        host = (None, "api.acme.test", "api.other.test")[i % 3]
        apis.append(Api(id=f"api{i}", workspace_id="bench", prefix=f"/svc{i}/v1",
                        upstream=Upstream.parse(f"http://10.0.0.{i % 250 + 1}:8080/base"),
                        host=host, policy_id="huge"))
    apis.append(Api(id="root", workspace_id="bench", prefix="/",
                    upstream=Upstream.parse("http://127.0.0.1:8080"), policy_id="huge"))
    keys = [ApiKey(id=f"k{i}", workspace_id="bench", key_hash=hash_key(k))
            for i, k in enumerate(plain_keys)]
    return Snapshot(tuple(apis), tuple(keys), (policy,))


@pytest.fixture(scope="session")
def topic() -> str:
    return f"bench-events-{uuid.uuid4().hex[:8]}"
