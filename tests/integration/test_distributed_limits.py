"""Limits hold across proxy replicas: two proxy processes share one Valkey."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest

from tests.integration.conftest import Keys, unique
from tests.servers import fetch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_proxies(proxies, upstream):
    keys = Keys()
    config = {"workspaces": [{
        "id": unique("ws"),
        "policies": [
            {"id": "log", "limits": ["100/min"], "algorithm": "sliding_log"},
            {"id": "window", "limits": ["100/min"], "algorithm": "sliding_window"},
        ],
        "apis": [{"id": "api", "prefix": "/api", "upstream": upstream.url}],
        "keys": [keys.entry("log", policy="log"), keys.entry("window", policy="window")],
    }]}
    first = proxies(config, name=unique("replica-a"))
    second = proxies(config, name=unique("replica-b"))
    return first, second, keys


async def burst(urls, auth, count: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=150)
    async with aiohttp.ClientSession(connector=connector) as client:
        targets = itertools.islice(itertools.cycle(urls), count)
        results = await asyncio.gather(*[
            fetch(client, "GET", f"{url}/api/x", headers=auth) for url in targets])
    return [status for status, _, _ in results]


async def test_sliding_log_admits_exactly_the_limit_across_replicas(two_proxies):
    first, second, keys = two_proxies
    statuses = await burst([first.url, second.url], keys.auth("log"), 300)
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200


async def test_sliding_window_stays_within_its_documented_bound(two_proxies):
    """Within one fixed window the weighted counter admits at most the limit; a burst
    that straddles a window boundary may admit up to limit * elapsed/window more."""
    first, second, keys = two_proxies
    loop = asyncio.get_running_loop()
    started = loop.time()
    statuses = await burst([first.url, second.url], keys.auth("window"), 300)
    took = loop.time() - started
    admitted = statuses.count(200)
    assert 100 <= admitted <= 100 + int(100 * took / 60) + 1
    assert statuses.count(429) == 300 - admitted
