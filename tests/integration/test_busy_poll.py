"""PROXY_BUSY_POLL_US: the same answers, and polling only while a request waits briefly.

Polling burns CPU on purpose, so what a user must be able to rely on is that it stops:
when no request is in flight, and after the configured time even when one is (a slow
upstream is waited for by sleeping, as without the setting).
"""

from __future__ import annotations

import asyncio

import pytest

from bench.harness.procs import cpu_seconds
from tests.integration.conftest import Keys
from tests.servers import fetch

pytestmark = pytest.mark.integration


async def test_busy_poll_answers_the_same_and_stops_polling(proxies, upstream, session):
    keys = Keys()
    config = {"workspaces": [{
        "id": "busypoll",
        "policies": [{"id": "two", "limits": ["2/min"]}],
        "apis": [{"id": "echo", "prefix": "/", "upstream": upstream.url}],
        "keys": [keys.entry("k", policy="two"), keys.entry("free")]}]}
    proxy = proxies(config, PROXY_BUSY_POLL_US="10000")  # the largest allowed, 10 ms
    url = f"{proxy.url}/echo/poll"

    statuses = [(await fetch(session, "GET", url, headers=keys.auth("k")))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # the limiter and the upstream as without polling
    status, headers, _ = await fetch(session, "GET", url, headers={"X-API-Key": "rg_nope"})
    assert status == 401 and headers["X-Request-Id"]

    # Nothing in flight: the proxy sleeps (polling for a second would cost about 1 s).
    pids = [proxy.proc.pid]
    before = cpu_seconds(pids)
    await asyncio.sleep(1.0)
    assert cpu_seconds(pids) - before < 0.25

    # A request in flight for a second: polled for 10 ms, then waited for asleep.
    before = cpu_seconds(pids)
    status, _, body = await fetch(session, "GET", f"{proxy.url}/slow?s=1.0",
                                  headers=keys.auth("free"))
    assert status == 200 and b"slept" in body
    assert cpu_seconds(pids) - before < 0.25
    assert proxy.proc.poll() is None and "Traceback" not in proxy.log()
