"""sliding_log is exact under adversarial timing: calls packed into the same
microseconds, pipelined by the thousand, across window boundaries, with cost > 1, and
from two proxy processes flooded by 40+ connections on one hot key.

What is checked is what the README promises: no interval of the window's length ever
holds more than N admissions, and the entries in Redis are exactly the admissions.
The admission times are read back from the entries themselves (their member names
carry the server's TIME to the microsecond), collected before any of them expires.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest

from rateguard.limiter.policy import Policy, parse_limit
from rateguard.limiter.redis_client import RedisClient
from rateguard.limiter.redis_store import SCRIPT_SHA, RedisStore
from tests.integration.conftest import Keys, unique

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url):
    client = RedisClient(redis_url, timeout=5.0)
    await RedisStore(client).load()
    yield client
    await client.close()


def entry_time_us(member: bytes) -> int:
    stamp, _, sequence = member.partition(b":")
    assert len(stamp) == 16 and stamp.isdigit() and sequence.isdigit(), member
    return int(stamp)


def assert_never_more_than(limit: int, window_us: int, times: list[int]) -> None:
    """No half-open interval of ``window_us`` holds more than ``limit`` of ``times``."""
    times = sorted(times)
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= window_us, (
            f"{limit + 1} admissions within {(times[i + limit] - times[i])} us "
            f"(window {window_us} us), starting at entry {i}")


async def collect(client: RedisClient, key: str, seen: dict[bytes, int]) -> None:
    record(await client.execute("ZRANGE", key, 0, -1, "WITHSCORES"), seen)


def record(members: list, seen: dict[bytes, int]) -> None:
    for member, score in zip(members[::2], members[1::2]):
        seen[member] = int(float(score))
        assert seen[member] == entry_time_us(member), "score and name disagree"


@pytest.mark.parametrize("cost", [1, 3])
async def test_thousands_of_pipelined_calls_never_exceed_the_limit(client, cost):
    """Bursts of 1,500 calls written at once (Redis runs them back to back, many in
    the same 100 us), back to back until four windows of one second are full: entries
    expire one by one while calls keep coming, where the cc96df2 script named two
    admissions alike (run this way it admitted 307 and kept 240 entries). A read of
    the whole log rides in the same pipeline after every 50 calls and after the last,
    so Redis runs it between them: an entry would have to wait a whole second, Redis
    stalled, to expire unread."""
    limit, window_ms = 60, 1000
    p = Policy(unique("p"), unique("ws"), (parse_limit(f"{limit}/{window_ms}ms"),),
               algorithm="sliding_log")
    keys = p.redis_keys("hot")
    args = ("log", cost, limit, window_ms)
    seen: dict[bytes, int] = {}
    admitted = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20  # a bound; on an idle machine this takes about 3 s
    while admitted < 4 * limit // cost and loop.time() < deadline:
        calls = []
        for i in range(1, 1501):
            calls.append(client.execute("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args))
            if i % 50 == 0:
                calls.append(client.execute("ZRANGE", keys[0], 0, -1, "WITHSCORES"))
        replies = await asyncio.gather(*calls)
        for i, reply in enumerate(replies):
            if i % 51 == 50:
                record(reply, seen)
            else:
                admitted += reply[0]
                assert reply[2] >= 0
        await asyncio.sleep(0.02)
    assert admitted >= 4 * limit // cost  # the bursts did span several windows
    assert len(seen) == admitted * cost  # one entry per unit admitted, none merged
    assert_never_more_than(limit, window_ms * 1000, list(seen.values()))


async def test_two_proxies_flooded_on_one_hot_key_admit_exactly(proxies, upstream, redis_url,
                                                                client):
    """Two proxy processes, 48 connections in a closed loop on one key for ~2.5 s."""
    keys = Keys()
    ws = unique("ws")
    config = {"workspaces": [{
        "id": ws,
        "policies": [{"id": "hot", "limits": ["20/s"], "algorithm": "sliding_log"}],
        "apis": [{"id": "api", "prefix": "/flood", "upstream": upstream.url}],
        "keys": [keys.entry("hot", policy="hot")],
    }]}
    first = proxies(config, name=unique("flood-a"))
    second = proxies(config, name=unique("flood-b"))
    policy = Policy("hot", ws, (parse_limit("20/s"),), algorithm="sliding_log")
    key = policy.redis_keys("hot")[0]
    statuses: list[int] = []
    seen: dict[bytes, int] = {}
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 2.5

    async def connection(url: str) -> None:
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            while loop.time() < stop_at:
                async with session.get(f"{url}/flood/x", headers=keys.auth("hot")) as r:
                    await r.read()
                    statuses.append(r.status)

    async def watch() -> None:
        while loop.time() < stop_at + 0.2:
            await collect(client, key, seen)
            await asyncio.sleep(0.1)

    urls = itertools.islice(itertools.cycle([first.url, second.url]), 48)
    await asyncio.gather(watch(), *[connection(url) for url in urls])
    await collect(client, key, seen)
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}, (
        {s: statuses.count(s) for s in set(statuses)}, first.log()[-2000:],
        second.log()[-2000:])
    assert statuses.count(429) > 10 * admitted  # it was a flood
    assert 40 <= admitted <= 60  # 20/s over 2.5 s: 2 or 3 windows' worth
    assert len(seen) == admitted
    assert_never_more_than(20, 1_000_000, list(seen.values()))
