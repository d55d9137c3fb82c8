"""One workspace's policy can never degrade another's, whatever it does to its own.

Workspace B is careless or hostile: it switches its policy's algorithm back and forth,
sets absurd limits, floods, and its counters meet data of the wrong type in Redis
(WRONGTYPE, as an edit once produced). Workspace A has a ``closed`` policy, so any
circuit opening would show as 503s. A must see only its own exact decisions.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from rateguard.errors import LimitCallFailed
from rateguard.limiter import Limiter, connect
from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Policy, parse_limit
from tests.integration.conftest import Keys, unique

pytestmark = pytest.mark.integration


async def test_a_wrongtype_for_one_workspace_leaves_the_others_on_redis(redis_url):
    store = connect(redis_url)
    errors: list[str] = []
    limiter = Limiter(store, MemoryStore(), on_error=lambda p: errors.append(p.workspace_id))
    await limiter.start()
    a = Policy("pa", unique("ws-a"), (parse_limit("50/min"),), algorithm="sliding_log",
               failure_mode="closed")
    b = Policy("pb", unique("ws-b"), (parse_limit("5/min"),), algorithm="sliding_log")
    for key in b.redis_keys("k"):
        await store.client.execute("SET", key, "not a sorted set")
    with pytest.raises(LimitCallFailed, match="WRONGTYPE"):
        await store.check(b, "k")
    results_a, results_b = await asyncio.gather(
        asyncio.gather(*[limiter.check(a, "k") for _ in range(80)]),
        asyncio.gather(*[limiter.check(b, "k") for _ in range(80)]))
    assert limiter.redis_up
    assert all(d is not None for d in results_a)  # never the closed policy's 503
    assert sum(d.allowed for d in results_a) == 50  # counted by Redis, exactly
    assert await store.client.execute("ZCARD", a.redis_keys("k")[0]) == 50
    # B's own requests used B's failure mode (open: the per-replica limiter)
    assert sum(d.allowed for d in results_b) == 5
    assert set(errors) == {b.workspace_id} and len(errors) == 80
    await limiter.close()


async def test_an_algorithm_switch_starts_fresh_keys_and_a_count_edit_keeps_them(redis_url):
    store = connect(redis_url)
    await store.load()
    ws = unique("ws")
    window = Policy("p", ws, (parse_limit("3/min"),), algorithm="sliding_window")
    assert [(await store.check(window, "k")).allowed for _ in range(4)] == [
        True, True, True, False]
    log = Policy("p", ws, (parse_limit("3/min"),), algorithm="sliding_log")
    assert [(await store.check(log, "k")).allowed for _ in range(4)] == [
        True, True, True, False]  # a new algorithm starts over, on its own keys
    roomier = Policy("p", ws, (parse_limit("5/min"),), algorithm="sliding_log")
    assert [(await store.check(roomier, "k")).allowed for _ in range(3)] == [
        True, True, False]  # a new count keeps what was counted: 3 of 5 were used
    back = Policy("p", ws, (parse_limit("3/min"),), algorithm="sliding_window")
    assert not (await store.check(back, "k")).allowed  # the window's keys live on
    await store.close()


async def test_a_hostile_workspace_cannot_open_the_circuit_of_another(
        proxies, upstream, redis_url):
    keys = Keys()
    ws_a, ws_b = unique("ws-a"), unique("ws-b")

    def config(b_algorithm: str, b_limits: list[str]) -> dict:
        return {"workspaces": [
            {"id": ws_a,
             "policies": [{"id": "steady", "limits": ["100000/min"],
                           "failure_mode": "closed"}],
             "apis": [{"id": "a", "prefix": "/a", "upstream": upstream.url}],
             "keys": [keys.entry("a", policy="steady")]},
            {"id": ws_b,
             "policies": [{"id": "careless", "limits": b_limits, "algorithm": b_algorithm,
                           "failure_mode": "closed"}],
             "apis": [{"id": "b", "prefix": "/b", "upstream": upstream.url}],
             "keys": [keys.entry("b", policy="careless")]},
        ]}

    proxy = proxies(config("sliding_window", ["10/s"]), name=unique("isolation"))
    poison = connect(redis_url)
    await poison.load()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + 6.0
    a_statuses: list[int] = []
    b_statuses: list[int] = []
    redis_states: set[str] = set()

    async def steady(session: aiohttp.ClientSession) -> None:
        while loop.time() < stop_at:
            async with session.get(f"{proxy.url}/a/x", headers=keys.auth("a")) as r:
                await r.read()
                a_statuses.append(r.status)
            await asyncio.sleep(0.005)

    async def flood(session: aiohttp.ClientSession) -> None:
        while loop.time() < stop_at:
            async with session.get(f"{proxy.url}/b/x", headers=keys.auth("b")) as r:
                await r.read()
                b_statuses.append(r.status)

    async def careless_edits() -> None:
        edits = [("sliding_log", ["10/s"]), ("sliding_window", ["10/s"]),
                 ("sliding_log", ["99999999999999999999999/s"]),  # refused: kept the last
                 ("sliding_window", ["1/99999999999999999999d"]),
                 ("sliding_log", ["5/s", "20/min"])]
        for algorithm, limits in edits * 2:
            proxy.update_config(config(algorithm, limits))
            for name in ("sliding_window", "sliding_log"):
                p = Policy("careless", ws_b, (parse_limit("10/s"),), algorithm=name)
                for key in p.redis_keys("b"):  # scope "key": the key's id
                    await poison.client.execute("SET", key, "wrong type")
            await asyncio.sleep(0.5)

    async def ready_watch(session: aiohttp.ClientSession) -> None:
        while loop.time() < stop_at:
            async with session.get(f"{proxy.url}/readyz") as r:
                redis_states.add((await r.json())["redis"])
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(steady(session), flood(session), flood(session),
                             careless_edits(), ready_watch(session))
        async with session.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as r:
            metrics = await r.text()
    await poison.close()

    assert len(a_statuses) > 100
    assert set(a_statuses) == {200}, {s: a_statuses.count(s) for s in set(a_statuses)}
    assert redis_states == {"up"}
    # B met its own errors: its closed policy answered 503 for those requests alone
    assert 503 in b_statuses
    assert f'rateguard_limiter_errors_total{{workspace="{ws_b}"}}' in metrics
    error_lines = [line for line in metrics.splitlines()
                   if line.startswith("rateguard_limiter_errors_total")]
    assert error_lines and not any(ws_a in line for line in error_lines)
    assert "config reload failed" in proxy.log()


@pytest.mark.parametrize("cluster", [False, True])
async def test_a_dead_server_is_unavailable_and_its_message_hides_the_password(cluster):
    from rateguard.embedded.servers import free_port
    from rateguard.errors import LimiterUnavailable

    port = free_port()  # nothing listens there
    store = connect(f"redis://user:s3cr3t@127.0.0.1:{port}/0", cluster=cluster, timeout=0.5)
    with pytest.raises(LimiterUnavailable) as caught:
        await store.load()
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cr3t" not in str(caught.value)
    limiter = Limiter(store, MemoryStore())
    await limiter.start()
    assert not limiter.redis_up  # the circuit opened: failure modes apply
    await limiter.close()
