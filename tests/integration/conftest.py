from __future__ import annotations

import time
import uuid

import pytest
import pytest_asyncio

from rateguard.embedded.servers import free_port
from rateguard.snapshot.keys import hash_key, new_key
from tests.servers import ProxyProcess, analytics_worker


class Keys:
    """Plaintext keys by name, for one config."""

    def __init__(self) -> None:
        self.plain: dict[str, str] = {}

    def entry(self, name: str, **fields) -> dict:
        key = self.plain.setdefault(name, new_key())
        return {"id": name, "sha256": hash_key(key), **fields}

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.plain[name]}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def env(redis_url, kafka_brokers, clickhouse_url, topic, clickhouse_db):
    return {"REDIS_URL": redis_url, "KAFKA_BROKERS": kafka_brokers, "KAFKA_TOPIC": topic,
            "CLICKHOUSE_URL": clickhouse_url, "CLICKHOUSE_DATABASE": clickhouse_db,
            "RATEGUARD_ENV": "development", "KAFKA_LINGER_MS": "5",
            "UPSTREAM_CONNECT_TIMEOUT": "2", "ANALYTICS_BATCH_SECONDS": "0.2"}


@pytest_asyncio.fixture(scope="session")
async def analytics(env):
    async with analytics_worker(env) as worker:
        yield worker


@pytest.fixture(scope="session")
def proxies(workdir, env):
    """Start proxy processes: proxies(config) -> ProxyProcess; all stop at the end."""
    started: list[ProxyProcess] = []

    def start(config: dict, name: str | None = None, **extra_env) -> ProxyProcess:
        proxy = ProxyProcess(config, {**env, **extra_env}, workdir, name or unique("proxy"))
        started.append(proxy.start())
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def gateway(proxies, upstream, analytics):
    """One proxy in front of the test upstream, with the APIs most tests use."""
    keys = Keys()
    dead_port = free_port()
    config = {"workspaces": [
        {"id": "ws1",
         "policies": [
             {"id": "three", "limits": ["3/min"], "algorithm": "sliding_log"},
             {"id": "three-sw", "limits": ["3/min"], "algorithm": "sliding_window"},
             {"id": "two-limits", "limits": ["5/s", "20/min"], "algorithm": "sliding_log"},
             {"id": "shadow", "limits": ["1/min"], "mode": "shadow"},
             {"id": "roomy", "limits": ["100000/min"]},
         ],
         "apis": [
             {"id": "echo", "prefix": "/echo", "upstream": upstream.url, "policy": "roomy"},
             {"id": "keep", "prefix": "/keep", "upstream": upstream.url + "/kept",
              "strip_prefix": False},
             {"id": "small-body", "prefix": "/small", "upstream": upstream.url,
              "max_body_bytes": 1024},
             {"id": "dead", "prefix": "/dead", "upstream": f"http://127.0.0.1:{dead_port}"},
             {"id": "slow", "prefix": "/slowapi", "upstream": upstream.url,
              "timeout_seconds": 0.5},
         ],
         "keys": [
             keys.entry("free"),
             keys.entry("three", policy="three"),
             keys.entry("three-sw", policy="three-sw"),
             keys.entry("two-limits", policy="two-limits"),
             keys.entry("shadow", policy="shadow"),
             keys.entry("revoked", revoked=True),
             keys.entry("expired", expires_at="2020-01-01T00:00:00Z"),
         ]},
        {"id": "ws2",
         "apis": [{"id": "other", "prefix": "/other", "upstream": upstream.url}],
         "keys": [keys.entry("ws2-key")]},
    ]}
    proxy = proxies(config, name="gateway")
    proxy.keys = keys
    return proxy


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result or time.monotonic() >= deadline:
            return result
        import asyncio
        await asyncio.sleep(interval)


@pytest_asyncio.fixture(scope="module")
async def plane(new_database):
    """The web app in this process on a fresh database of its own, for one module, with
    default options. Modules that need ClickHouse, Redis or other options define their
    own ``plane``, which takes precedence."""
    from tests.integration.control import ControlPlane

    control = ControlPlane(await new_database())
    await control.start()
    yield control
    await control.stop()
