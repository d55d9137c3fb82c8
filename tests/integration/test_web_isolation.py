"""Isolation: every query is scoped by workspace. A member of A gets 404 for anything of
B (as if it did not exist), and a viewer cannot change anything (403)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.integration.control import ControlPlane

pytestmark = pytest.mark.integration

READS = [
    ("GET", "/workspaces/{ws}", None),
    ("GET", "/workspaces/{ws}/members", None),
    ("GET", "/workspaces/{ws}/policies", None),
    ("GET", "/workspaces/{ws}/policies/{pol}", None),
    ("GET", "/workspaces/{ws}/apis", None),
    ("GET", "/workspaces/{ws}/apis/{api}", None),
    ("GET", "/workspaces/{ws}/keys", None),
    ("GET", "/workspaces/{ws}/keys/{key}", None),
    ("GET", "/workspaces/{ws}/audit", None),
    ("GET", "/workspaces/{ws}/analytics/requests", None),
    ("GET", "/workspaces/{ws}/analytics/latency", None),
    ("GET", "/workspaces/{ws}/analytics/decisions", None),
    ("GET", "/workspaces/{ws}/analytics/top-keys", None),
    ("GET", "/workspaces/{ws}/analytics/top-paths", None),
]
WRITES = [
    ("PATCH", "/workspaces/{ws}", {"name": "taken over"}),
    ("GET", "/workspaces/{ws}/invitations", None),  # admin only
    ("POST", "/workspaces/{ws}/invitations", {"email": "spy@example.com", "role": "admin"}),
    ("DELETE", "/workspaces/{ws}/invitations/{inv}", None),
    ("PATCH", "/workspaces/{ws}/members/{user}", {"role": "viewer"}),
    ("DELETE", "/workspaces/{ws}/members/{user}", None),
    ("POST", "/workspaces/{ws}/policies", {"name": "x", "limits": ["1/s"]}),
    ("PATCH", "/workspaces/{ws}/policies/{pol}", {"limits": ["1000000/s"]}),
    ("DELETE", "/workspaces/{ws}/policies/{pol}", None),
    ("POST", "/workspaces/{ws}/apis", {"name": "x", "prefix": "/hijack",
                                       "upstream_url": "http://evil.example"}),
    ("PATCH", "/workspaces/{ws}/apis/{api}", {"upstream_url": "http://evil.example"}),
    ("DELETE", "/workspaces/{ws}/apis/{api}", None),
    ("POST", "/workspaces/{ws}/keys", {"name": "mine now"}),
    ("POST", "/workspaces/{ws}/keys/{key}/revoke", None),
    ("POST", "/workspaces/{ws}/keys/{key}/roll", {"overlap_seconds": 0}),
]
WITH_IDS = [entry for entry in READS + WRITES if "{" in entry[1].replace("{ws}", "")]


async def _tenant(plane: ControlPlane, name: str) -> dict:
    owner = await plane.signup(name)
    base = f"/workspaces/{owner.workspace_id}"
    _, pol = await plane.call("POST", base + "/policies", owner,
                              json={"name": "p", "limits": ["10/s"]})
    _, api = await plane.call("POST", base + "/apis", owner, json={
        "name": "a", "prefix": f"/{name}", "upstream_url": "http://127.0.0.1:1",
        "policy_id": pol["id"]})
    _, key = await plane.call("POST", base + "/keys", owner, json={"name": "k"})
    _, inv = await plane.call("POST", base + "/invitations", owner,
                              json={"email": f"{name}-guest@example.com", "role": "viewer"})
    return {"owner": owner, "ids": {"ws": owner.workspace_id, "pol": pol["id"],
                                    "api": api["id"], "key": key["id"], "inv": inv["id"],
                                    "user": owner.user_id}}


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, analytics, env):
    control = ControlPlane(await new_database(), analytics.clickhouse, env["CLICKHOUSE_DATABASE"])
    await control.start()
    yield control
    await control.stop()


@pytest_asyncio.fixture(scope="module")
async def tenants(plane):
    a, b = await _tenant(plane, "alpha"), await _tenant(plane, "beta")
    a["viewer"] = await plane.member(a["owner"], "viewer")
    a["admin"] = await plane.member(a["owner"], "admin")
    return a, b


@pytest.mark.parametrize("method,path,body", READS + WRITES)
async def test_another_workspace_is_not_found(plane, tenants, method, path, body):
    a, b = tenants
    status, error = await plane.call(method, path.format(**b["ids"]), a["owner"],
                                     **({"json": body} if body is not None else {}))
    assert (status, error["error"]) == (404, "not_found")


@pytest.mark.parametrize("method,path,body", WITH_IDS)
async def test_ids_of_another_workspace_are_not_found_in_ones_own(plane, tenants, method,
                                                                 path, body):
    a, b = tenants
    ids = {**b["ids"], "ws": a["ids"]["ws"]}
    status, error = await plane.call(method, path.format(**ids), a["owner"],
                                     **({"json": body} if body is not None else {}))
    assert status == 404, error


async def test_nothing_of_b_changed(plane, tenants):
    _a, b = tenants
    owner, ids = b["owner"], b["ids"]
    _, key = await plane.call("GET", f"/workspaces/{ids['ws']}/keys/{ids['key']}", owner)
    assert key["status"] == "active" and key["replaced_by"] is None
    _, api = await plane.call("GET", f"/workspaces/{ids['ws']}/apis/{ids['api']}", owner)
    assert api["upstream_url"] == "http://127.0.0.1:1"
    _, keys = await plane.call("GET", f"/workspaces/{ids['ws']}/keys", owner)
    assert len(keys["items"]) == 1
    _, audit = await plane.call("GET", f"/workspaces/{ids['ws']}/audit", owner)
    assert {e["actor"] for e in audit["items"]} == {owner.email}


@pytest.mark.parametrize("method,path,body", WRITES)
async def test_a_viewer_cannot_change_anything(plane, tenants, method, path, body):
    a, _b = tenants
    ids = {**a["ids"], "user": a["admin"].user_id}
    status, error = await plane.call(method, path.format(**ids), a["viewer"],
                                     **({"json": body} if body is not None else {}))
    assert (status, error["error"]) == (403, "forbidden")


@pytest.mark.parametrize("method,path,body", READS)
async def test_a_viewer_reads_everything(plane, tenants, method, path, body):
    a, _b = tenants
    status, body = await plane.call(method, path.format(**a["ids"]), a["viewer"])
    assert status == 200, body


async def test_an_admin_manages_the_gateway(plane, tenants):
    a, _b = tenants
    base = f"/workspaces/{a['ids']['ws']}"
    status, key = await plane.call("POST", base + "/keys", a["admin"], json={"name": "by admin"})
    assert status == 201 and key["created_by"] == a["admin"].user_id
    status, _ = await plane.call("PATCH", base + f"/policies/{a['ids']['pol']}", a["admin"],
                                 json={"limits": ["20/s"]})
    assert status == 200
