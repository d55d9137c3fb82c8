"""Beyond one Redis: three proxy processes on a real three-master Valkey cluster."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest

from rateguard.embedded.cluster import EmbeddedValkeyCluster
from tests.integration.conftest import Keys, unique
from tests.servers import fetch

pytestmark = pytest.mark.integration

WORKSPACES = 50


def crc16_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag when it has one)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    crc = 0
    for byte in key.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


@pytest.fixture(scope="module")
def cluster(workdir):
    cluster = EmbeddedValkeyCluster(workdir / unique("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


def workspace_group(keys: Keys, prefix: str, algorithm: str, failure_mode: str,
                    upstream_url: str) -> list[dict]:
    group = []
    for i in range(WORKSPACES):
        ws = f"{prefix}{i}"
        group.append({
            "id": ws,
            "policies": [{"id": "p", "limits": ["10/min"], "algorithm": algorithm,
                          "failure_mode": failure_mode}],
            "apis": [{"id": "api", "prefix": f"/{ws}", "upstream": upstream_url,
                      "policy": "p"}],
            "keys": [keys.entry(ws)],
        })
    return group


@pytest.fixture(scope="module")
def replicas(cluster, proxies, upstream):
    keys = Keys()
    run = unique("c")
    groups = {
        "log": workspace_group(keys, f"{run}-log-", "sliding_log", "open", upstream.url),
        "window": workspace_group(keys, f"{run}-win-", "sliding_window", "open", upstream.url),
        "closed": workspace_group(keys, f"{run}-closed-", "sliding_log", "closed", upstream.url),
        "open": workspace_group(keys, f"{run}-open-", "sliding_log", "open", upstream.url),
    }
    config = {"workspaces": [ws for group in groups.values() for ws in group]}
    # A generous call timeout: on a loaded CI machine 250 ms can pass on a live shard,
    # which would count as that shard being down (this test is about which shards).
    started = [proxies(config, name=unique("cluster-proxy"), REDIS_URL=cluster.url,
                       REDIS_TIMEOUT_MS="1500")
               for _ in range(3)]
    return started, keys, groups


async def spread(proxies_, keys: Keys, workspaces: list[dict], per_workspace: int):
    """per_workspace requests to every workspace, all at once, round-robin over the
    proxies. Returns {workspace: [statuses]}."""
    jobs = []
    urls = itertools.cycle([p.url for p in proxies_])
    for ws in workspaces:
        for _ in range(per_workspace):
            jobs.append((ws["id"], next(urls)))
    connector = aiohttp.TCPConnector(limit=300)
    async with aiohttp.ClientSession(connector=connector) as client:
        results = await asyncio.gather(*[
            fetch(client, "GET", f"{url}/{ws}/x", headers=keys.auth(ws)) for ws, url in jobs])
    statuses: dict[str, list[int]] = {}
    for (ws, _), (status, _, _) in zip(jobs, results):
        statuses.setdefault(ws, []).append(status)
    return statuses


async def test_sliding_log_is_exact_per_workspace_across_three_replicas(replicas):
    proxies_, keys, groups = replicas
    statuses = await spread(proxies_, keys, groups["log"], 20)  # 1,000 requests
    assert sum(len(s) for s in statuses.values()) == 1000
    for ws, codes in statuses.items():
        assert codes.count(200) == 10, (ws, codes)
        assert codes.count(429) == 10, (ws, codes)


async def test_sliding_window_stays_within_its_bound(replicas):
    proxies_, keys, groups = replicas
    loop = asyncio.get_running_loop()
    started = loop.time()
    statuses = await spread(proxies_, keys, groups["window"], 20)
    bound = 10 + int(10 * (loop.time() - started) / 60) + 1
    for ws, codes in statuses.items():
        assert 10 <= codes.count(200) <= bound, (ws, codes)
        assert codes.count(200) + codes.count(429) == 20


def test_workspaces_spread_over_all_three_masters(cluster, replicas):
    per_node = []
    for i in range(3):
        names = cluster.client(i).keys("rg:{*")
        per_node.append(len(names))
    assert all(count > 0 for count in per_node), per_node
    # one workspace's keys live on the master owning its hash tag's slot
    proxies_, keys, groups = replicas
    ws = groups["log"][0]["id"]
    key = f"rg:{{{ws}}}:rl:p:log:key:{ws}:60s"
    owner = cluster.slot_owner(crc16_slot(key))
    assert cluster.client(owner).exists(key) == 1


async def test_an_error_answer_on_a_shard_fails_one_call_and_leaves_the_shard_up(cluster):
    """WRONGTYPE on one workspace's key is that call's problem: the shard is not
    skipped, so another workspace on the same master keeps being counted there."""
    from rateguard.errors import LimitCallFailed
    from rateguard.limiter import Limiter, connect
    from rateguard.limiter.policy import Policy, parse_limit

    run = unique("shard")
    victim = Policy("p", f"{run}-b", (parse_limit("5/min"),), algorithm="sliding_log")
    owner = cluster.slot_owner(crc16_slot(victim.redis_keys("k")[0]))
    neighbour = next(
        p for p in (Policy("p", f"{run}-a{i}", (parse_limit("5/min"),), failure_mode="closed")
                    for i in range(1000))
        if cluster.slot_owner(crc16_slot(p.redis_keys("k")[0])) == owner)
    cluster.client(owner).set(victim.redis_keys("k")[0], "wrong type")
    store = connect(cluster.url, cluster=True)
    limiter = Limiter(store)
    await limiter.start()
    with pytest.raises(LimitCallFailed, match="WRONGTYPE"):
        await store.check(victim, "k")
    decisions = [await limiter.check(neighbour, "k") for _ in range(7)]
    assert [d is not None and d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert cluster.client(owner).hget(neighbour.redis_keys("k")[0], "c") is not None
    await limiter.close()


async def test_killing_one_master_only_touches_its_workspaces(cluster, replicas):
    proxies_, keys, groups = replicas
    victim = 2
    cluster.kill(victim)

    def on_victim(ws: str) -> bool:
        return cluster.slot_owner(crc16_slot(f"rg:{{{ws}}}")) == victim

    closed = groups["closed"]
    survivors = [ws for ws in closed if not on_victim(ws["id"])]
    orphans = [ws for ws in closed if on_victim(ws["id"])]
    assert survivors and orphans
    statuses = await spread(proxies_, keys, closed, 15)
    for ws in survivors:
        codes = statuses[ws["id"]]
        assert codes.count(200) == 10 and codes.count(429) == 5, (
            ws["id"], codes, [p.log()[-3000:] for p in proxies_])
    for ws in orphans:
        assert set(statuses[ws["id"]]) == {503}, (  # fails closed
            statuses[ws["id"]], [p.log()[-4000:] for p in proxies_])

    opened = [ws for ws in groups["open"] if on_victim(ws["id"])]
    statuses = await spread(proxies_, keys, opened, 6)
    for ws in opened:
        # failure mode open: each replica applies the policy alone, no errors
        assert set(statuses[ws["id"]]) == {200}, statuses[ws["id"]]
    all_codes = [c for codes in statuses.values() for c in codes]
    assert 500 not in all_codes
    for proxy in proxies_:
        assert "unexpected error" not in proxy.log()
