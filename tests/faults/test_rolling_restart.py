"""Rolling restart: SIGTERM under load. Readiness fails at once, requests already in
flight complete, their events are flushed to Kafka (and land in ClickHouse exactly
once), and the process exits 0 within its grace period (PROXY_DRAIN_SECONDS)."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson
import pytest

from tests.faults.conftest import Keys, Pipeline, new_clickhouse, unique
from tests.servers import fetch

pytestmark = pytest.mark.integration


async def test_sigterm_under_load_fails_no_request_in_flight_and_loses_no_event(
        start_proxy, upstream, session, kafka_brokers, clickhouse_url):
    topic = unique("rolling")
    brokers = tuple(kafka_brokers.split(","))
    clickhouse = await new_clickhouse(clickhouse_url)
    pipeline = await Pipeline(clickhouse, brokers, topic).start()
    keys = Keys()
    config = {"workspaces": [{"id": "rolling", "apis": [
        {"id": "api", "prefix": "/", "upstream": upstream.url}], "keys": [keys.entry("k")]}]}
    proxy = start_proxy(config, "rolling", KAFKA_TOPIC=topic, PROXY_DRAIN_SECONDS="5")
    auth = keys.auth("k")
    stopping = asyncio.Event()
    fast: list = []

    async def client() -> None:
        # A fresh connection per request: after SIGTERM new connections are refused,
        # which is what a client of a replica leaving the Service sees.
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as own:
            while not stopping.is_set():
                try:
                    fast.append(await fetch(own, "GET", f"{proxy.url}/echo", headers=auth))
                except aiohttp.ClientError:
                    fast.append(None)
                    await asyncio.sleep(0.02)

    try:
        clients = [asyncio.ensure_future(client()) for _ in range(8)]
        await asyncio.sleep(0.5)
        slow = [asyncio.ensure_future(fetch(session, "GET", f"{proxy.url}/slow?s=1.5",
                                            headers=auth)) for _ in range(20)]
        await asyncio.sleep(0.5)  # the slow ones are now in flight at the upstream
        sent_before = len(fast)
        proxy.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.1)
        status, _, body = await fetch(
            session, "GET", f"http://127.0.0.1:{proxy.metrics_port}/readyz")
        assert status == 503 and orjson.loads(body)["draining"] is True

        results = await asyncio.gather(*slow)
        assert [r[0] for r in results] == [200] * 20, "a request in flight failed"
        code = await asyncio.get_running_loop().run_in_executor(None, proxy.proc.wait, 10)
        assert code == 0 and time.monotonic() - signalled < 5 + 2
        stopping.set()
        await asyncio.gather(*clients)

        answered = [r for r in fast if r is not None]
        assert sent_before > 20 and answered
        assert {r[0] for r in answered} == {200}, "no answer other than 200, even draining"
        ids = [r[1]["X-Request-Id"] for r in answered + results]
        counts = await pipeline.wait_exactly_once(ids, timeout=20)
        assert len(counts) == len(set(ids)), "events of answered requests were lost"
        assert set(counts.values()) == {1}
        assert "Traceback" not in proxy.log()
    finally:
        stopping.set()
        await pipeline.stop()
        await clickhouse.close()
