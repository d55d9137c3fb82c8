"""The management API against real PostgreSQL (and ClickHouse for analytics): every
endpoint's happy path and the 4xx a client can cause."""

from __future__ import annotations

import asyncpg
import pytest
import pytest_asyncio

from rateguard.web.auth import Tokens
from tests.integration.control import JWT_SECRET, ControlPlane

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, analytics, env):
    control = ControlPlane(await new_database(), analytics.clickhouse, env["CLICKHOUSE_DATABASE"])
    await control.start()
    yield control
    await control.stop()


@pytest_asyncio.fixture(scope="module")
async def owner(plane):
    return await plane.signup("owner", name="Olive", workspace_name="Olive's APIs")


def ws(account, tail: str = "") -> str:
    return f"/workspaces/{account.workspace_id}{tail}"


# -- accounts ------------------------------------------------------------------------------

async def test_signup_makes_the_user_owner_of_a_new_workspace(plane):
    account = await plane.signup("first", workspace_name="Acme")
    status, me = await plane.call("GET", "/me", account)
    assert status == 200
    assert me["user"]["email"] == account.email
    assert [(w["name"], w["role"]) for w in me["workspaces"]] == [("Acme", "owner")]
    conn = await asyncpg.connect(plane.database_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1",
                                     account.user_id)
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$") and account.password not in stored


@pytest.mark.parametrize("body,status,field", [
    ({"email": "not-an-email", "password": "long enough"}, 422, "email"),
    ({"email": "a@example.com", "password": "short"}, 422, "password"),
    ({"email": "a@example.com"}, 422, "password"),
    ({"email": "a@example.com", "password": "long enough", "admin": True}, 422, "admin"),
    ({"email": "a@example.com", "password": "long enough", "invitation": "rgi_nope"},
     422, "invitation"),
    (["a list"], 422, "body"),
])
async def test_signup_refuses_bad_fields_naming_them(plane, body, status, field):
    got, error = await plane.call("POST", "/auth/signup", json=body)
    assert (got, error["error"], error["field"]) == (status, "invalid", field)
    assert error["message"].startswith(field)


async def test_signup_refuses_a_taken_email_and_malformed_json(plane, owner):
    status, error = await plane.call("POST", "/auth/signup", json={
        "email": owner.email.upper(), "password": "another password"})
    assert (status, error["error"]) == (409, "conflict")
    status, error = await plane.call("POST", "/auth/signup", data=b"{nope",
                                     headers={"Content-Type": "application/json"})
    assert (status, error["error"]) == (400, "bad_request")
    status, error = await plane.call("POST", "/auth/signup")
    assert status == 400 and "JSON" in error["message"]


async def test_login_refresh_and_logout(plane, owner):
    status, session = await plane.call("POST", "/auth/login", json={
        "email": owner.email, "password": owner.password})
    assert status == 200 and session["token_type"] == "Bearer"
    assert 0 < session["expires_in"] <= 3600
    auth = {"Authorization": f"Bearer {session['access_token']}"}
    assert (await plane.call("GET", "/me", headers=auth))[0] == 200

    status, renewed = await plane.call("POST", "/auth/refresh",
                                       json={"refresh_token": session["refresh_token"]})
    assert status == 200 and renewed["refresh_token"] != session["refresh_token"]
    # A refresh token works once: it was rotated. Presented again it was copied, so
    # the session ends (tests/integration/test_account_recovery.py has the details).
    status, error = await plane.call("POST", "/auth/refresh",
                                     json={"refresh_token": session["refresh_token"]})
    assert (status, error["error"]) == (401, "unauthorized")
    auth = {"Authorization": f"Bearer {renewed['access_token']}"}
    assert (await plane.call("GET", "/me", headers=auth))[0] == 401

    status, session = await plane.call("POST", "/auth/login", json={
        "email": owner.email, "password": owner.password})
    status, renewed = await plane.call("POST", "/auth/refresh",
                                       json={"refresh_token": session["refresh_token"]})
    assert status == 200
    auth = {"Authorization": f"Bearer {renewed['access_token']}"}
    assert (await plane.call("POST", "/auth/logout", headers=auth))[0] == 204
    # Logout really revokes: the (unexpired) access token and the refresh token stop.
    status, error = await plane.call("GET", "/me", headers=auth)
    assert status == 401 and "session" in error["message"]
    status, _ = await plane.call("POST", "/auth/refresh",
                                 json={"refresh_token": renewed["refresh_token"]})
    assert status == 401
    # Other sessions of the same user are unaffected.
    assert (await plane.call("GET", "/me", owner))[0] == 200


@pytest.mark.parametrize("email_of,password,status", [
    ("owner", "wrong password", 401), ("nobody", "correct horse battery", 401),
])
async def test_login_refuses_wrong_credentials(plane, owner, email_of, password, status):
    email = owner.email if email_of == "owner" else "nobody@example.com"
    got, error = await plane.call("POST", "/auth/login", json={"email": email,
                                                               "password": password})
    assert (got, error["message"]) == (status, "wrong email or password")


async def test_login_needs_both_fields(plane):
    status, error = await plane.call("POST", "/auth/login", json={"email": "a@example.com"})
    assert (status, error["field"]) == (422, "password")


async def test_requests_without_a_valid_token_get_401(plane, owner):
    response = await plane.http.get(plane.api + "/me")
    assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["error"] == "unauthorized"
    for header in ("Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer "):
        status, _ = await plane.call("GET", "/me", headers={"Authorization": header})
        assert status == 401, header
    expired = Tokens(JWT_SECRET, ttl=-10).issue(owner.user_id, "ses_whatever")
    status, error = await plane.call("GET", "/me",
                                     headers={"Authorization": f"Bearer {expired}"})
    assert status == 401 and "expired" in error["message"]
    forged = Tokens("another-secret-" + "y" * 32).issue(owner.user_id, "ses_whatever")
    status, _ = await plane.call("GET", "/me", headers={"Authorization": f"Bearer {forged}"})
    assert status == 401


# -- workspaces, members, invitations -------------------------------------------------------

async def test_workspaces_create_list_get_rename(plane):
    account = await plane.signup("ws")
    status, made = await plane.call("POST", "/workspaces", account, json={"name": "Second"})
    assert status == 201 and made["role"] == "owner"
    status, listed = await plane.call("GET", "/workspaces", account)
    assert status == 200 and [w["id"] for w in listed["items"]] == [account.workspace_id,
                                                                    made["id"]]
    status, got = await plane.call("GET", f"/workspaces/{made['id']}", account)
    assert (status, got["name"]) == (200, "Second")
    status, renamed = await plane.call("PATCH", f"/workspaces/{made['id']}", account,
                                       json={"name": "  Renamed  "})
    assert (status, renamed["name"]) == (200, "Renamed")
    status, error = await plane.call("PATCH", f"/workspaces/{made['id']}", account,
                                     json={"name": ""})
    assert (status, error["field"]) == (422, "name")
    status, error = await plane.call("POST", "/workspaces", account, json={})
    assert (status, error["field"]) == (422, "name")


async def test_invitations_members_and_roles(plane):
    owner = await plane.signup("boss")
    admin = await plane.member(owner, "admin")
    viewer = await plane.member(owner, "viewer")
    status, members = await plane.call("GET", ws(owner, "/members"), viewer)
    assert status == 200
    assert {m["email"]: m["role"] for m in members["items"]} == {
        owner.email: "owner", admin.email: "admin", viewer.email: "viewer"}

    # An existing user accepts with their own account.
    other = await plane.signup("existing")
    status, invitation = await plane.call("POST", ws(owner, "/invitations"), admin,
                                          json={"email": other.email, "role": "viewer"})
    assert status == 201 and invitation["token"].startswith("rgi_")
    status, listed = await plane.call("GET", ws(owner, "/invitations"), admin)
    assert status == 200 and "token" not in listed["items"][0]
    status, error = await plane.call("POST", "/invitations/accept", viewer,
                                     json={"token": invitation["token"]})
    assert (status, error["field"]) == (422, "invitation")  # sent to another address
    status, joined = await plane.call("POST", "/invitations/accept", other,
                                      json={"token": invitation["token"]})
    assert (status, joined["id"], joined["role"]) == (200, owner.workspace_id, "viewer")
    status, _ = await plane.call("POST", "/invitations/accept", other,
                                 json={"token": invitation["token"]})
    assert status == 422  # used

    # Withdrawn invitations cannot be used.
    status, pending = await plane.call("POST", ws(owner, "/invitations"), owner,
                                       json={"email": "late@example.com", "role": "admin"})
    assert (await plane.call("DELETE", ws(owner, f"/invitations/{pending['id']}"),
                             admin))[0] == 204
    assert (await plane.call("DELETE", ws(owner, f"/invitations/{pending['id']}"),
                             admin))[0] == 404
    status, _ = await plane.call("POST", "/auth/signup", json={
        "email": "late@example.com", "password": "long enough", "invitation": pending["token"]})
    assert status == 422

    # Only an owner hands out 'owner'; an admin manages viewers and admins.
    status, error = await plane.call("POST", ws(owner, "/invitations"), admin,
                                     json={"email": "x@example.com", "role": "owner"})
    assert (status, error["error"]) == (403, "forbidden")
    status, error = await plane.call("PATCH", ws(owner, f"/members/{viewer.user_id}"), admin,
                                     json={"role": "owner"})
    assert status == 403
    status, member = await plane.call("PATCH", ws(owner, f"/members/{viewer.user_id}"), admin,
                                      json={"role": "admin"})
    assert (status, member["role"]) == (200, "admin")
    status, error = await plane.call("PATCH", ws(owner, f"/members/{viewer.user_id}"), admin,
                                     json={"role": "god"})
    assert (status, error["field"]) == (422, "role")
    # The last owner stays.
    status, error = await plane.call("PATCH", ws(owner, f"/members/{owner.user_id}"), owner,
                                     json={"role": "viewer"})
    assert (status, error["error"]) == (409, "conflict")
    status, _ = await plane.call("DELETE", ws(owner, f"/members/{owner.user_id}"), owner)
    assert status == 409
    # Anyone may leave; a viewer cannot remove others.
    status, _ = await plane.call("DELETE", ws(owner, f"/members/{admin.user_id}"), other)
    assert status == 403
    assert (await plane.call("DELETE", ws(owner, f"/members/{other.user_id}"), other))[0] == 204
    assert (await plane.call("GET", ws(owner), other))[0] == 404
    assert (await plane.call("DELETE", ws(owner, f"/members/{admin.user_id}"), owner))[0] == 204
    assert (await plane.call("DELETE", ws(owner, "/members/usr_nobody"), owner))[0] == 404


# -- policies -------------------------------------------------------------------------------

async def test_policy_crud(plane, owner):
    status, policy = await plane.call("POST", ws(owner, "/policies"), owner, json={
        "name": "standard", "limits": ["100/s", "5000/h"], "algorithm": "sliding_log"})
    assert status == 201
    assert (policy["limits"], policy["scope"], policy["mode"], policy["failure_mode"]) == (
        ["100/s", "5000/h"], "key", "enforce", "open")
    status, got = await plane.call("GET", ws(owner, f"/policies/{policy['id']}"), owner)
    assert (status, got) == (200, policy)
    status, listed = await plane.call("GET", ws(owner, "/policies"), owner)
    assert policy["id"] in [p["id"] for p in listed["items"]]
    status, changed = await plane.call("PATCH", ws(owner, f"/policies/{policy['id']}"), owner,
                                       json={"limits": ["5/s"], "mode": "shadow"})
    assert (status, changed["limits"], changed["mode"], changed["name"]) == (
        200, ["5/s"], "shadow", "standard")
    assert (await plane.call("DELETE", ws(owner, f"/policies/{policy['id']}"), owner))[0] == 204
    assert (await plane.call("GET", ws(owner, f"/policies/{policy['id']}"), owner))[0] == 404
    assert (await plane.call("DELETE", ws(owner, f"/policies/{policy['id']}"), owner))[0] == 404


@pytest.mark.parametrize("body,field,words", [
    ({"name": "p", "limits": []}, "limits", "non-empty"),
    ({"name": "p", "limits": ["0/s"]}, "limits[0]", "between 1 and"),
    ({"name": "p", "limits": ["99999999999999999999999/s"]}, "limits[0]", "between 1 and"),
    ({"name": "p", "limits": ["1/99999999999999999999d"]}, "limits[0]", "366 days"),
    ({"name": "p", "limits": ["10/s", "-5/m"]}, "limits[1]", "expected"),
    ({"name": "p", "limits": ["10/parsec"]}, "limits[0]", "unknown unit"),
    ({"name": "p", "limits": [10]}, "limits[0]", "string"),
    ({"name": "p", "limits": ["10/s", "20/1s"]}, "limits", "share a window"),
    ({"name": "p", "limits": ["1/s"], "scope": "galaxy"}, "scope", "key, ip, api"),
    ({"name": "p", "limits": ["1/s"], "algorithm": "fixed"}, "algorithm", "sliding_window"),
    ({"name": "p", "limits": ["1/s"], "mode": "maybe"}, "mode", "enforce"),
    ({"name": "p", "limits": ["1/s"], "failure_mode": "x"}, "failure_mode", "open"),
    ({"limits": ["1/s"]}, "name", "required"),
    ({"name": "p", "limits": ["1/s"], "burst": 3}, "burst", "unknown"),
])
async def test_policy_validation_names_the_field(plane, owner, body, field, words):
    status, error = await plane.call("POST", ws(owner, "/policies"), owner, json=body)
    assert (status, error["error"], error["field"]) == (422, "invalid", field)
    assert words in error["message"]


async def test_a_policy_in_use_cannot_be_deleted(plane, owner):
    _, policy = await plane.call("POST", ws(owner, "/policies"), owner,
                                 json={"name": "used", "limits": ["1/s"]})
    _, key = await plane.call("POST", ws(owner, "/keys"), owner,
                              json={"name": "k", "policy_id": policy["id"]})
    status, error = await plane.call("DELETE", ws(owner, f"/policies/{policy['id']}"), owner)
    assert (status, error["error"]) == (409, "conflict")
    await plane.call("POST", ws(owner, f"/keys/{key['id']}/revoke"), owner)
    assert (await plane.call("DELETE", ws(owner, f"/policies/{policy['id']}"), owner))[0] == 204


# -- APIs -----------------------------------------------------------------------------------

async def test_api_crud_keeps_upstream_credentials_secret(plane, owner):
    _, policy = await plane.call("POST", ws(owner, "/policies"), owner,
                                 json={"name": "api-policy", "limits": ["10/s"]})
    await plane.assign_host("api.example.com", owner.workspace_id)  # other workspaces exist
    status, api = await plane.call("POST", ws(owner, "/apis"), owner, json={
        "name": "orders", "host": "API.Example.com", "prefix": "/orders/",
        "upstream_url": "http://orders.internal:8080/v1", "policy_id": policy["id"],
        "timeout_seconds": 2.5, "max_body_bytes": 1024,
        "upstream_headers": {"X-Upstream-Token": "s3cret-value"}})
    assert status == 201, api
    assert (api["host"], api["prefix"], api["upstream_header_names"]) == (
        "api.example.com", "/orders", ["X-Upstream-Token"])
    for method, path in (("GET", f"/apis/{api['id']}"), ("GET", "/apis")):
        status, body = await plane.call(method, ws(owner, path), owner)
        assert status == 200 and "s3cret-value" not in str(body)
    _, audit = await plane.call("GET", ws(owner, "/audit"), owner)
    assert "s3cret-value" not in str(audit)
    conn = await asyncpg.connect(plane.database_url)
    try:
        stored = await conn.fetchval("SELECT upstream_headers FROM apis WHERE id = $1", api["id"])
    finally:
        await conn.close()
    assert "s3cret-value" not in stored and '"v1:' in stored

    status, changed = await plane.call("PATCH", ws(owner, f"/apis/{api['id']}"), owner,
                                       json={"strip_prefix": False, "policy_id": None})
    assert (status, changed["strip_prefix"], changed["policy_id"]) == (200, False, None)
    assert changed["upstream_header_names"] == ["X-Upstream-Token"]  # kept unless given
    status, changed = await plane.call("PATCH", ws(owner, f"/apis/{api['id']}"), owner,
                                       json={"upstream_headers": {}})
    assert (status, changed["upstream_header_names"]) == (200, [])
    assert (await plane.call("DELETE", ws(owner, f"/apis/{api['id']}"), owner))[0] == 204
    assert (await plane.call("GET", ws(owner, f"/apis/{api['id']}"), owner))[0] == 404


@pytest.mark.parametrize("change,field", [
    ({"upstream_url": "ftp://x"}, "upstream_url"),
    ({"upstream_url": None}, "upstream_url"),
    ({"prefix": "orders"}, "prefix"),
    ({"prefix": "/a/../b"}, "prefix"),
    ({"host": "not a host"}, "host"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"max_body_bytes": 1.5}, "max_body_bytes"),
    ({"strip_prefix": "yes"}, "strip_prefix"),
    ({"upstream_headers": {"Host": "x"}}, "upstream_headers.Host"),
    ({"upstream_headers": {"Bad Name": "x"}}, "upstream_headers.Bad Name"),
    ({"upstream_headers": {"X-A": "line\r\nbreak"}}, "upstream_headers.X-A"),
    ({"upstream_headers": ["X-A"]}, "upstream_headers"),
])
async def test_api_validation_names_the_field(plane, owner, change, field):
    body = {"name": "bad", "prefix": "/bad", "upstream_url": "http://127.0.0.1:1", **change}
    status, error = await plane.call("POST", ws(owner, "/apis"), owner, json=body)
    assert (status, error["field"]) == (422, field), error


async def test_a_route_is_taken_once_across_workspaces(plane, owner):
    other = await plane.signup("router")
    body = {"name": "r", "prefix": "/shared-route", "upstream_url": "http://127.0.0.1:1"}
    assert (await plane.call("POST", ws(owner, "/apis"), owner, json=body))[0] == 201
    status, error = await plane.call("POST", ws(other, "/apis"), other, json=body)
    assert (status, error["error"], error["field"]) == (409, "conflict", "prefix")
    # The same prefix on a named host is another route, once an operator gave the host
    # to that workspace (until then it would shadow owner's any-host route there).
    status, error = await plane.call("POST", ws(other, "/apis"), other,
                                     json={**body, "host": "other.example.com"})
    assert (status, error["field"]) == (409, "host")
    await plane.assign_host("other.example.com", other.workspace_id)
    status, _ = await plane.call("POST", ws(other, "/apis"), other,
                                 json={**body, "host": "other.example.com"})
    assert status == 201


# -- keys -----------------------------------------------------------------------------------

async def test_key_create_shows_the_key_once_then_only_its_prefix(plane, owner):
    status, made = await plane.call("POST", ws(owner, "/keys"), owner, json={
        "name": "mobile app", "expires_at": "2099-01-01T00:00:00Z"})
    assert status == 201
    key = made["key"]
    assert key.startswith("rg_") and made["prefix"] == key[:8] and made["last_four"] == key[-4:]
    assert made["status"] == "active" and made["created_by"] == owner.user_id
    assert made["expires_at"].startswith("2099-01-01T00:00:00")
    status, listed = await plane.call("GET", ws(owner, "/keys"), owner)
    assert status == 200 and key not in str(listed)
    entry = next(k for k in listed["items"] if k["id"] == made["id"])
    assert "key" not in entry and entry["last_used_at"] is None
    status, got = await plane.call("GET", ws(owner, f"/keys/{made['id']}"), owner)
    assert status == 200 and got == entry


@pytest.mark.parametrize("body,field", [
    ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
    ({"name": ""}, "name"),
    ({}, "name"),
])
async def test_key_validation(plane, owner, body, field):
    status, error = await plane.call("POST", ws(owner, "/keys"), owner, json=body)
    assert (status, error["field"]) == (422, field)


async def test_a_reference_to_a_missing_policy_is_409_naming_the_field(plane, owner):
    """A well-formed id that names nothing in the workspace conflicts with its current
    state (409, naming the field): not a malformed field (422, which the OpenAPI document
    predicts), nor a 404 (which would say the path's workspace is not found)."""
    _, api = await plane.call("POST", ws(owner, "/apis"), owner, json={
        "name": "refs", "prefix": "/missing-refs", "upstream_url": "http://127.0.0.1:1"})
    for method, path, body in (
            ("POST", "/keys", {"name": "k", "policy_id": "pol_missing"}),
            ("POST", "/apis", {"name": "bad", "prefix": "/bad", "policy_id": "pol_missing",
                               "upstream_url": "http://127.0.0.1:1"}),
            ("PATCH", f"/apis/{api['id']}", {"policy_id": "pol_missing"})):
        status, error = await plane.call(method, ws(owner, path), owner, json=body)
        assert (status, error["error"], error["field"]) == (409, "conflict", "policy_id"), \
            error
        assert "no such policy" in error["message"]


async def test_key_revoke_and_roll(plane, owner):
    _, made = await plane.call("POST", ws(owner, "/keys"), owner, json={"name": "rolling"})
    status, rolled = await plane.call("POST", ws(owner, f"/keys/{made['id']}/roll"), owner,
                                      json={"overlap_seconds": 600})
    assert status == 201
    new, previous = rolled["key"], rolled["previous"]
    assert new["key"].startswith("rg_") and new["name"] == "rolling"
    assert previous["id"] == made["id"] and previous["replaced_by"] == new["id"]
    assert previous["status"] == "active" and previous["expires_at"] is not None

    status, error = await plane.call("POST", ws(owner, f"/keys/{new['id']}/roll"), owner,
                                     json={"overlap_seconds": -1})
    assert (status, error["field"]) == (422, "overlap_seconds")
    status, revoked = await plane.call("POST", ws(owner, f"/keys/{new['id']}/revoke"), owner)
    assert (status, revoked["status"]) == (200, "revoked") and revoked["revoked_at"]
    status, again = await plane.call("POST", ws(owner, f"/keys/{new['id']}/revoke"), owner)
    assert (status, again["revoked_at"]) == (200, revoked["revoked_at"])
    status, error = await plane.call("POST", ws(owner, f"/keys/{new['id']}/roll"), owner)
    assert (status, error["error"]) == (409, "conflict")
    # overlap 0: the old key stops at once.
    _, other = await plane.call("POST", ws(owner, "/keys"), owner, json={"name": "now"})
    _, rolled = await plane.call("POST", ws(owner, f"/keys/{other['id']}/roll"), owner,
                                 json={"overlap_seconds": 0})
    assert rolled["previous"]["status"] == "revoked"
    for path in ("/keys/key_missing", "/keys/key_missing/revoke", "/keys/key_missing/roll"):
        method = "GET" if path.count("/") == 2 else "POST"
        assert (await plane.call(method, ws(owner, path), owner))[0] == 404


# -- audit, analytics, OpenAPI, probes -------------------------------------------------------

async def test_audit_log_records_who_changed_what(plane):
    account = await plane.signup("audited")
    _, key = await plane.call("POST", ws(account, "/keys"), account, json={"name": "audit-me"})
    await plane.call("POST", ws(account, f"/keys/{key['id']}/revoke"), account)
    status, audit = await plane.call("GET", ws(account, "/audit"), account)
    assert status == 200
    actions = [(e["action"], e["actor"]) for e in audit["items"]]
    assert actions[:2] == [("key.revoke", account.email), ("key.create", account.email)]
    assert ("workspace.create", account.email) in actions
    status, page = await plane.call("GET", ws(account, "/audit"), account, params={"limit": "1"})
    assert [e["id"] for e in page["items"]] == [audit["items"][0]["id"]]
    status, page = await plane.call("GET", ws(account, "/audit"), account,
                                    params={"before": str(audit["items"][0]["id"])})
    assert page["items"] == audit["items"][1:]
    for bad in ({"limit": "0"}, {"limit": "lots"}, {"before": "-3"}):
        status, error = await plane.call("GET", ws(account, "/audit"), account, params=bad)
        assert (status, error["field"]) == (422, next(iter(bad))), bad


@pytest.mark.parametrize("name", ["requests", "latency", "decisions", "top-keys",
                                  "top-paths"])
async def test_analytics_endpoints_answer_for_an_empty_range(plane, owner, name):
    status, body = await plane.call("GET", ws(owner, f"/analytics/{name}"), owner, params={
        "from": "2020-01-01T00:00:00Z", "to": "2020-01-01T01:00:00Z"})
    assert status == 200, body
    assert body["from"].startswith("2020-01-01T00:00:00")
    for bad, field in (({"from": "2020-01-02T00:00:00Z", "to": "2020-01-01T00:00:00Z"}, "from"),
                       ({"to": "yesterday"}, "to")):
        status, error = await plane.call("GET", ws(owner, f"/analytics/{name}"), owner,
                                         params=bad)
        assert (status, error["field"]) == (422, field)


async def test_analytics_step_must_be_whole_minutes(plane, owner):
    status, error = await plane.call("GET", ws(owner, "/analytics/requests"), owner,
                                     params={"step": "90"})
    assert (status, error["field"]) == (422, "step")


async def test_openapi_document_lists_exactly_the_served_routes(plane):
    response = await plane.http.get(plane.api + "/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    served = {(r.method, r.resource.canonical) for r in plane.app.router.routes()
              if r.resource.canonical.startswith("/api/v1") and r.method != "HEAD"}
    assert documented == served
    for item in document["paths"].values():
        for operation in item.values():
            for status, response_doc in operation["responses"].items():
                if status.startswith("4"):
                    assert response_doc["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}


async def test_probes_and_unknown_paths(plane):
    for path in ("/healthz", "/readyz"):
        response = await plane.http.get(plane.url + path)
        assert response.status == 200, path
    status, error = await plane.call("GET", "/no-such-thing")
    assert (status, error["error"]) == (404, "not_found")
    status, error = await plane.call("PUT", "/me")
    assert (status, error["error"]) == (405, "method_not_allowed")


async def test_nul_bytes_and_deep_json_are_client_errors(plane, owner):
    status, error = await plane.call("POST", ws(owner, "/policies"), owner,
                                     json={"name": "a\x00b", "limits": ["1/s"]})
    assert (status, error["field"]) == (422, "name")
    status, _ = await plane.call("GET", f"/workspaces/{owner.workspace_id}%00", owner)
    assert status == 404
    status, error = await plane.call("POST", "/auth/login",
                                     json={"email": "a\x00@example.com", "password": "x"})
    assert (status, error["field"]) == (422, "email")
    status, error = await plane.call("POST", "/auth/signup", data=b"[" * 100000,
                                     headers={"Content-Type": "application/json"})
    assert (status, error["error"]) == (400, "bad_request")
