"""Live config: changes made through the management API reach every running proxy
(`rateguard proxy` with DATABASE_URL, two processes) within two seconds, through
LISTEN/NOTIFY; the periodic full reload catches what a notification missed."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson
import pytest
import pytest_asyncio

from rateguard.crypto import KeyRing
from rateguard.snapshot.keys import hash_key, new_key
from rateguard.snapshot.pg_source import PgSource
from rateguard.web.app import USAGE
from tests.integration.conftest import unique, wait_until
from tests.integration.control import ENCRYPTION_KEY, ControlPlane, PgProxy
from tests.servers import fetch

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, analytics, env):
    control = ControlPlane(await new_database(), analytics.clickhouse,
                           env["CLICKHOUSE_DATABASE"], usage_interval=3600)
    await control.start()
    yield control
    await control.stop()


@pytest_asyncio.fixture(scope="module")
async def tenant(plane, upstream):
    owner = await plane.signup("live")
    base = f"/workspaces/{owner.workspace_id}"
    _, roomy = await plane.call("POST", base + "/policies", owner,
                                json={"name": "roomy", "limits": ["10000/min"]})
    prefix = "/" + unique("live")
    status, api = await plane.call("POST", base + "/apis", owner, json={
        "name": "echo", "prefix": prefix, "upstream_url": upstream.url,
        "policy_id": roomy["id"], "upstream_headers": {"X-Upstream-Token": "s3cret"}})
    assert status == 201, api
    return {"owner": owner, "base": base, "prefix": prefix, "api": api, "policy": roomy}


@pytest.fixture(scope="module")
def fleet(plane, tenant, env, workdir):
    proxies = [PgProxy(plane.database_url, env, workdir, unique("pgproxy")).start()
               for _ in range(2)]
    yield proxies
    for proxy in proxies:
        proxy.stop()


async def statuses(session, fleet, tenant, key: str, path: str = "/hello") -> list[int]:
    results = []
    for proxy in fleet:
        status, _, _ = await fetch(session, "GET", proxy.url + tenant["prefix"] + path,
                                   headers={"Authorization": f"Bearer {key}"})
        results.append(status)
    return results


async def until_all(session, fleet, tenant, key: str, expected: int,
                    timeout: float = 2.0) -> float:
    """Seconds until every proxy answers ``expected`` for ``key``; fails past timeout."""
    started = time.monotonic()
    while True:
        got = await statuses(session, fleet, tenant, key)
        elapsed = time.monotonic() - started
        if got == [expected] * len(fleet):
            return elapsed
        assert elapsed < timeout, f"after {elapsed:.2f}s the proxies answer {got}"
        await asyncio.sleep(0.05)


async def make_key(plane, tenant, **fields) -> dict:
    status, key = await plane.call("POST", tenant["base"] + "/keys", tenant["owner"],
                                   json={"name": unique("key"), **fields})
    assert status == 201, key
    return key


async def test_a_new_key_works_at_every_proxy_with_the_decrypted_credential(
        plane, tenant, fleet, session):
    key = await make_key(plane, tenant)
    await until_all(session, fleet, tenant, key["key"], 200)
    for proxy in fleet:
        status, _, body = await fetch(session, "GET", proxy.url + tenant["prefix"] + "/x",
                                      headers={"X-API-Key": key["key"]})
        echoed = orjson.loads(body)
        assert status == 200 and echoed["path"] == "/x"
        assert echoed["headers"]["x-upstream-token"] == "s3cret"
        assert key["key"] not in str(echoed["headers"])


async def test_a_revoked_key_is_refused_at_every_proxy_within_two_seconds(
        plane, tenant, fleet, session):
    key = await make_key(plane, tenant)
    await until_all(session, fleet, tenant, key["key"], 200)
    status, _ = await plane.call("POST", f"{tenant['base']}/keys/{key['id']}/revoke",
                                 tenant["owner"])
    assert status == 200
    elapsed = await until_all(session, fleet, tenant, key["key"], 401, timeout=2.0)
    assert elapsed < 2.0
    status, _, body = await fetch(session, "GET", fleet[0].url + tenant["prefix"] + "/",
                                  headers={"Authorization": f"Bearer {key['key']}"})
    assert orjson.loads(body)["error"] == "unauthorized"


async def test_a_rolled_key_overlaps_then_the_old_one_stops(plane, tenant, fleet, session):
    old = await make_key(plane, tenant)
    await until_all(session, fleet, tenant, old["key"], 200)
    status, rolled = await plane.call("POST", f"{tenant['base']}/keys/{old['id']}/roll",
                                      tenant["owner"], json={"overlap_seconds": 3})
    assert status == 201
    new = rolled["key"]["key"]
    await until_all(session, fleet, tenant, new, 200)
    # During the overlap both keys work everywhere.
    assert await statuses(session, fleet, tenant, old["key"]) == [200, 200]
    assert await statuses(session, fleet, tenant, new) == [200, 200]
    await asyncio.sleep(3.2)
    await until_all(session, fleet, tenant, old["key"], 401, timeout=2.0)
    assert await statuses(session, fleet, tenant, new) == [200, 200]


async def test_a_policy_change_applies_at_every_proxy(plane, tenant, fleet, session):
    owner, base = tenant["owner"], tenant["base"]
    _, policy = await plane.call("POST", base + "/policies", owner,
                                 json={"name": unique("tight"), "limits": ["1000/min"],
                                       "algorithm": "sliding_log"})
    probe = await make_key(plane, tenant, policy_id=policy["id"])
    await until_all(session, fleet, tenant, probe["key"], 200)
    status, _ = await plane.call("PATCH", f"{base}/policies/{policy['id']}", owner,
                                 json={"limits": ["2/min"]})
    assert status == 200

    async def limit_is_two():
        heads = []
        for proxy in fleet:
            _, headers, _ = await fetch(session, "GET", proxy.url + tenant["prefix"] + "/",
                                        headers={"X-API-Key": probe["key"]})
            heads.append(headers.get("RateLimit-Policy"))
        return heads == ["2;w=60", "2;w=60"]

    started = time.monotonic()
    assert await wait_until(limit_is_two, timeout=2.0, interval=0.05)
    assert time.monotonic() - started < 2.0
    fresh = await make_key(plane, tenant, policy_id=policy["id"])
    # Each proxy is asked until it knows the key (401 before), and then no more: the
    # two proxies may learn it at different moments, and every answer but a 401 counts.
    first: dict[int, int] = {}
    deadline = time.monotonic() + 2.0
    while len(first) < len(fleet):
        assert time.monotonic() < deadline, f"the proxies answered {first} after 2 s"
        for i, proxy in enumerate(fleet):
            if i not in first:
                (status,) = await statuses(session, [proxy], tenant, fresh["key"])
                if status != 401:
                    first[i] = status
        await asyncio.sleep(0.02)
    assert sorted(first.values()) == [200, 200]  # 2/min, counted across both proxies
    assert await statuses(session, fleet, tenant, fresh["key"]) == [429, 429]


async def test_usage_reaches_analytics_and_last_used_at(plane, tenant, fleet, session):
    owner, base = tenant["owner"], tenant["base"]
    key = await make_key(plane, tenant)
    await until_all(session, fleet, tenant, key["key"], 200)
    for _ in range(3):
        await statuses(session, fleet, tenant, key["key"], "/analytics-path")
    await statuses(session, fleet, tenant, "rg_not_a_key", "/analytics-path")
    _, once = await plane.call("POST", base + "/policies", owner, json={
        "name": unique("once"), "limits": ["1/min"], "algorithm": "sliding_log"})
    limited = await make_key(plane, tenant, policy_id=once["id"])
    await until_all(session, fleet[:1], tenant, limited["key"], 200)
    assert await statuses(session, fleet[:1], tenant, limited["key"]) == [429]

    async def top_keys():
        status, body = await plane.call("GET", base + "/analytics/top-keys", owner)
        assert status == 200, body
        return next((k for k in body["items"] if k["key_id"] == key["id"]
                     and k["requests"] >= 8), None)

    entry = await wait_until(top_keys, timeout=20, interval=0.3)
    assert entry and entry["name"] == key["name"] and entry["prefix"] == key["prefix"]

    status, paths = await plane.call("GET", base + "/analytics/top-paths", owner,
                                     params={"limit": "100"})
    assert status == 200
    assert any(p["path"] == tenant["prefix"] + "/analytics-path" and p["requests"] >= 8
               for p in paths["items"])
    status, decisions = await plane.call("GET", base + "/analytics/decisions", owner)
    assert status == 200 and decisions["allowed"] >= 8 and decisions["unauthorized"] >= 2
    assert decisions["limited"] >= 1
    status, requests = await plane.call("GET", base + "/analytics/requests", owner,
                                        params={"api_id": tenant["api"]["id"]})
    assert status == 200 and sum(b["2xx"] for b in requests["buckets"]) >= 8
    assert sum(b["4xx"] for b in requests["buckets"]) >= 2
    status, latency = await plane.call("GET", base + "/analytics/latency", owner)
    assert status == 200 and 0 < latency["p50"] <= latency["p95"] <= latency["p99"]

    # last_used_at comes from the events, never from the proxy's request path.
    assert (await plane.call("GET", f"{base}/keys/{key['id']}", owner))[1]["last_used_at"] is None
    await plane.app[USAGE].run_once()
    _, fetched = await plane.call("GET", f"{base}/keys/{key['id']}", owner)
    assert fetched["last_used_at"] is not None
    assert fetched["last_used_at"] >= key["created_at"]


async def test_the_periodic_reload_catches_a_missed_notification(plane, tenant):
    """A change written without NOTIFY, and a dropped listening connection, still reach
    the snapshot through the periodic full reload and the reconnect."""
    source = PgSource(plane.database_url, KeyRing(ENCRYPTION_KEY), reload_interval=0.3)
    snapshots = []
    await source.load()
    task = asyncio.ensure_future(source.watch(snapshots.append))
    conn = await asyncpg.connect(plane.database_url)
    try:
        plaintext = new_key()
        await conn.execute(
            "INSERT INTO api_keys (id, workspace_id, name, key_hash, prefix, last_four)"
            " VALUES ($1, $2, 'silent', $3, 'rg_', 'xxxx')", unique("key"),
            tenant["owner"].workspace_id, hash_key(plaintext))

        async def seen():
            return bool(snapshots) and hash_key(plaintext) in snapshots[-1].keys_by_hash
        assert await wait_until(seen, timeout=3)

        # Drop the listener's connection; the source reconnects and reloads.
        await wait_until(lambda: asyncio.sleep(0, source._conn is not None), timeout=2)
        await conn.execute("SELECT pg_terminate_backend($1)", source._conn.get_server_pid())
        await conn.execute("DELETE FROM api_keys WHERE key_hash = $1", hash_key(plaintext))

        async def gone():
            return hash_key(plaintext) not in snapshots[-1].keys_by_hash
        assert await wait_until(gone, timeout=5)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await conn.close()
