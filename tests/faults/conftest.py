"""Fault tests: real servers started, killed and restarted by the tests themselves.

Each test that kills a server starts its own (a dedicated Valkey or Tansu broker on
127.0.0.1), so the session servers other tests use are never touched. ClickHouse is
chdb in this process (one engine per process): each test uses its own database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from rateguard.analytics.clickhouse import ClickHouse
from rateguard.analytics.consumer import Ingester
from rateguard.events.topics import ensure_topic
from tests.integration.conftest import Keys, unique, wait_until  # noqa: F401
from tests.servers import ProxyProcess

IN_PROCESS_LOG = "faults-in-process.log"


@pytest.fixture(scope="session")
def fenv(redis_url, kafka_brokers, clickhouse_url):
    return {"REDIS_URL": redis_url, "KAFKA_BROKERS": kafka_brokers,
            "KAFKA_TOPIC": unique("faults-events"), "CLICKHOUSE_URL": clickhouse_url,
            "RATEGUARD_ENV": "development", "KAFKA_LINGER_MS": "5",
            "UPSTREAM_CONNECT_TIMEOUT": "2"}


@pytest.fixture(scope="session", autouse=True)
def in_process_log(workdir):
    """Everything this process logs (analytics ingesters), at DEBUG, into a file the
    secrets test scans along with the proxies' logs."""
    path = workdir / IN_PROCESS_LOG
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    ours = logging.getLogger("rateguard")
    old_level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    ours.setLevel(old_level)
    handler.close()


@pytest.fixture
def start_proxy(workdir, fenv):
    """start_proxy(config, **env) -> a running ProxyProcess, stopped after the test."""
    started: list[ProxyProcess] = []

    def start(config: dict, name: str = "proxy", wait_ready: bool = True,
              **extra_env) -> ProxyProcess:
        proxy = ProxyProcess(config, {**fenv, **extra_env}, workdir, unique(name))
        started.append(proxy)
        if wait_ready:
            proxy.start()
        else:
            start_unready(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def start_unready(proxy: ProxyProcess) -> None:
    """Start the process and wait for its port only (readiness may stay 503)."""
    import subprocess
    import sys

    from rateguard.embedded.servers import wait_for_port

    with open(proxy.log_path, "ab") as log:
        proxy.proc = subprocess.Popen(
            [sys.executable, "-m", "rateguard", "proxy", "--config", str(proxy.config_path)],
            env=proxy.env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(proxy.port, 20, f"proxy (log {proxy.log_path})", proxy.proc)


class Pipeline:
    """An analytics ingester (this process, chdb) on its own topic and database."""

    def __init__(self, clickhouse: ClickHouse, brokers: tuple[str, ...], topic: str) -> None:
        self.clickhouse = clickhouse
        self.brokers = brokers
        self.topic = topic
        self.group = f"faults-{uuid.uuid4().hex[:8]}"
        self.ingester: Ingester | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> "Pipeline":
        await ensure_topic(self.brokers, self.topic)
        self.ingester = Ingester(self.clickhouse, self.brokers, self.topic, self.group,
                                 batch_seconds=0.2)
        await self.ingester.start()
        self.task = asyncio.ensure_future(self.ingester.run())
        return self

    async def stop(self) -> None:
        if self.ingester is not None:
            self.ingester.request_stop()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except Exception:
                self.task.cancel()
        if self.ingester is not None:
            await self.ingester.stop()

    async def counts(self, ids: list[str]) -> dict[str, int]:
        db = self.clickhouse.database
        _, rows = await self.clickhouse.query(
            f"SELECT id, count() FROM {db}.api_events WHERE id IN {{ids:Array(String)}} "
            "GROUP BY id", {"ids": ids})
        return {row[0]: row[1] for row in rows}

    async def wait_exactly_once(self, ids: list[str], timeout: float = 30) -> dict[str, int]:
        """Wait until every id has landed; returns the counts (the caller asserts)."""
        counts: dict[str, int] = {}

        async def landed():
            nonlocal counts
            counts = await self.counts(ids)
            return len(counts) >= len(set(ids))

        await wait_until(landed, timeout=timeout, interval=0.3)
        await asyncio.sleep(1.0)  # a late duplicate would show now
        return await self.counts(ids)


async def new_clickhouse(clickhouse_url: str) -> ClickHouse:
    clickhouse = ClickHouse(clickhouse_url, f"rg_faults_{uuid.uuid4().hex[:8]}")
    await clickhouse.setup()
    return clickhouse


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample in an exposition text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def elapsed(since: float) -> float:
    return time.monotonic() - since
