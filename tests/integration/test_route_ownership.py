"""Route ownership across workspaces (issue 17): whatever workspace B configures, A's
clients keep reaching A's upstream through A's key check, and nothing of A's traffic
lands in B's analytics. Each takeover shape is tried through the management API (and
one as a row written behind its back, as an install from before the rule may hold);
every refusal is 409 and names nothing of A. Hosts are assigned by the operator's CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import orjson
import pytest
import pytest_asyncio

from tests.integration.conftest import unique, wait_until
from tests.integration.control import ControlPlane, PgProxy
from tests.servers import fetch

pytestmark = pytest.mark.integration

A_HOST = "a-tenant.test"


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENCRYPTION_KEY", "JWT_SECRET", "KAFKA_BROKERS", "CLICKHOUSE_URL",
                        "REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "rateguard", *args],
                          env={**env, "DATABASE_URL": database_url},
                          capture_output=True, text=True, timeout=60)


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, analytics, env):
    control = ControlPlane(await new_database(), analytics.clickhouse,
                           env["CLICKHOUSE_DATABASE"], usage_interval=3600)
    await control.start()
    yield control
    await control.stop()


async def _api(plane, who, body):
    return await plane.call("POST", f"/workspaces/{who.workspace_id}/apis", who,
                            json={"name": "n", **body})


@pytest_asyncio.fixture(scope="module")
async def tenants(plane, upstream):
    a = await plane.signup("victim")
    b = await plane.signup("taker")
    # The operator gives A its host; A also routes /ux for any host (the shared default).
    done = cli("hosts", "assign", A_HOST, a.workspace_id, database_url=plane.database_url)
    assert done.returncode == 0, done.stderr
    status, hosted = await _api(plane, a, {"host": A_HOST, "prefix": "/ah",
                                           "upstream_url": upstream.url + "/a-side"})
    assert status == 201, hosted
    status, anyhost = await _api(plane, a, {"prefix": "/ux",
                                            "upstream_url": upstream.url + "/a-side"})
    assert status == 201, anyhost
    _, a_key = await plane.call("POST", f"/workspaces/{a.workspace_id}/keys", a,
                                json={"name": "a-client"})
    _, b_key = await plane.call("POST", f"/workspaces/{b.workspace_id}/keys", b,
                                json={"name": "b-client"})
    return {"a": a, "b": b, "a_key": a_key["key"], "b_key": b_key["key"],
            "a_ids": {a.workspace_id, hosted["id"], anyhost["id"], a_key["id"]}}


@pytest.fixture(scope="module")
def proxy(plane, tenants, env, workdir):
    started = PgProxy(plane.database_url, env, workdir, unique("owner-proxy")).start()
    yield started
    started.stop()


TAKEOVERS = [
    ({"host": A_HOST, "prefix": "/ah"}, "host"),             # A's host and prefix
    ({"host": A_HOST, "prefix": "/ah/hello"}, "host"),       # a longer sub-prefix of A's
    ({"host": A_HOST, "prefix": "/"}, "host"),               # / on A's host
    ({"host": A_HOST, "prefix": "/elsewhere"}, "host"),      # anything on A's host
    ({"host": "127.0.0.1", "prefix": "/ux"}, "host"),        # a host over A's any-host /ux
    ({"host": "127.0.0.1", "prefix": "/"}, "host"),
    ({"prefix": "/ux"}, "prefix"),                            # any-host on A's any-host
    ({"prefix": "/ux/hello"}, "prefix"),
    ({"prefix": "/"}, "prefix"),
]


async def a_is_served(session, proxy, tenants):
    """A's clients, on A's host and on any host, reach A's upstream with A's key."""
    auth = {"Authorization": f"Bearer {tenants['a_key']}"}
    for host, path, upstream_path in [
            (A_HOST, "/ah/hello/x", "/a-side/hello/x"), (A_HOST, "/ah", "/a-side/"),
            (A_HOST, "/ux/hello", "/a-side/hello"),  # A's any-host routes on A's host
            ("127.0.0.1", "/ux/hello", "/a-side/hello"), ("anything.test", "/ux", "/a-side/")]:
        status, _, body = await fetch(session, "GET", proxy.url + path,
                                      headers={**auth, "Host": host})
        assert status == 200, (host, path, status, body)
        assert orjson.loads(body)["path"] == upstream_path, (host, path)


@pytest.mark.parametrize("body,field", TAKEOVERS)
async def test_b_cannot_route_over_a(plane, tenants, upstream, body, field):
    b = tenants["b"]
    status, answer = await _api(plane, b, {**body, "upstream_url": upstream.url + "/b-side"})
    assert status == 409 and answer["field"] == field, answer
    text = orjson.dumps(answer).decode()
    assert not any(i in text for i in tenants["a_ids"]), text
    assert A_HOST not in answer["message"] or field == "host" and "assign" in answer["message"]


async def test_b_cannot_move_its_own_api_over_a(plane, tenants, upstream):
    b = tenants["b"]
    status, own = await _api(plane, b, {"prefix": "/bee", "upstream_url": upstream.url + "/b-side"})
    assert status == 201, own
    for change, field in [({"prefix": "/ux/hello"}, "prefix"), ({"host": A_HOST}, "host"),
                          ({"prefix": "/"}, "prefix"), ({"host": "127.0.0.1", "prefix": "/ux"},
                                                        "host")]:
        status, answer = await plane.call(
            "PATCH", f"/workspaces/{b.workspace_id}/apis/{own['id']}", b, json=change)
        assert status == 409 and answer["field"] == field, (change, answer)
    # Renaming or re-pointing its own route is not a route change: allowed.
    status, _ = await plane.call("PATCH", f"/workspaces/{b.workspace_id}/apis/{own['id']}", b,
                                 json={"name": "renamed"})
    assert status == 200


async def test_a_keeps_its_traffic_and_analytics(plane, tenants, proxy, session, upstream):
    a, b = tenants["a"], tenants["b"]
    # A row written behind the API's back (an install from before the rule): B on A's
    # host under A's prefix. The proxy leaves it out of its routes.
    conn = await asyncpg.connect(plane.database_url)
    try:
        await conn.execute(
            "INSERT INTO apis (id, workspace_id, name, host, prefix, upstream_url)"
            " VALUES ('api_legacy_take', $1, 'legacy', $2, '/ah/hello', $3)",
            b.workspace_id, A_HOST, upstream.url + "/b-side")
        await conn.execute("SELECT pg_notify('rateguard_config', '{}')")
    finally:
        await conn.close()
    await asyncio.sleep(0.5)
    for _ in range(3):
        await a_is_served(session, proxy, tenants)
    # B's own any-host route still works for B, and not on A's host.
    b_auth = {"Authorization": f"Bearer {tenants['b_key']}"}
    status, _, body = await fetch(session, "GET", proxy.url + "/bee/1",
                                  headers={**b_auth, "Host": "b.example"})
    assert status == 200 and orjson.loads(body)["path"] == "/b-side/1"
    status, _, _ = await fetch(session, "GET", proxy.url + "/bee/1",
                               headers={**b_auth, "Host": A_HOST})
    assert status == 404
    # A's requests with B's key never reach B's upstream either.
    status, _, _ = await fetch(session, "GET", proxy.url + "/ah/hello",
                               headers={**b_auth, "Host": A_HOST})
    assert status == 401

    async def a_paths():
        status, got = await plane.call("GET", f"/workspaces/{a.workspace_id}/analytics/top-paths",
                                       a, params={"limit": "100"})
        assert status == 200
        paths = {p["path"]: p["requests"] for p in got["items"]}
        return paths if paths.get("/ah/hello/x", 0) >= 3 and paths.get("/ux/hello", 0) >= 6 \
            else None

    assert await wait_until(a_paths, timeout=20, interval=0.3)
    status, got = await plane.call("GET", f"/workspaces/{b.workspace_id}/analytics/top-paths",
                                   b, params={"limit": "100"})
    assert status == 200
    b_paths = {p["path"] for p in got["items"]}
    assert not b_paths & {"/ah/hello/x", "/ah", "/ux/hello", "/ux", "/ah/hello"}, b_paths


async def test_the_operator_reserves_any_host_routes(plane, tenants, proxy, session, upstream):
    a, b = tenants["a"], tenants["b"]
    # Refused while B has any-host APIs; the operator is told whose.
    refused = cli("hosts", "assign", "*", a.workspace_id, database_url=plane.database_url)
    assert refused.returncode != 0 and b.workspace_id in refused.stderr
    conn = await asyncpg.connect(plane.database_url)
    try:
        await conn.execute("DELETE FROM apis WHERE workspace_id = $1 AND host IS NULL",
                           b.workspace_id)
    finally:
        await conn.close()
    done = cli("hosts", "assign", "*", a.workspace_id, database_url=plane.database_url)
    assert done.returncode == 0, done.stderr
    listed = cli("hosts", "list", database_url=plane.database_url)
    assert A_HOST in listed.stdout and "*" in listed.stdout
    status, answer = await _api(plane, b, {"prefix": "/fresh",
                                           "upstream_url": upstream.url + "/b-side"})
    assert status == 409 and answer["field"] == "host", answer
    assert a.workspace_id not in orjson.dumps(answer).decode()
    status, answer = await _api(plane, a, {"prefix": "/ux2",
                                           "upstream_url": upstream.url + "/a-side"})
    assert status == 201, answer
    await asyncio.sleep(0.5)
    await a_is_served(session, proxy, tenants)


async def test_a_single_workspace_claims_hosts_by_routing(new_database, upstream):
    """An install with one workspace (`rateguard up`, a team's own instance) routes on
    any host it names, as before; the host is then its own."""
    plane = ControlPlane(await new_database())
    await plane.start()
    try:
        only = await plane.signup("only")
        status, api = await _api(plane, only, {"host": "api.example.com", "prefix": "/",
                                               "upstream_url": upstream.url})
        assert status == 201, api
        second = await plane.signup("second")
        status, answer = await _api(plane, second, {"host": "other.example.com",
                                                    "prefix": "/", "upstream_url": upstream.url})
        assert status == 409 and answer["field"] == "host", answer
        listed = cli("hosts", "list", database_url=plane.database_url)
        assert "api.example.com" in listed.stdout and "other.example.com" not in listed.stdout
    finally:
        await plane.stop()
