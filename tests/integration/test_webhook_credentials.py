"""Webhook URL credentials (``user:password@``) are secrets: sealed at rest, masked for
every member, used only for delivery. And an invitation accepted by someone who is
already a member is refused (409) and stays pending (issue 17)."""

from __future__ import annotations

import base64

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from rateguard.crypto import KeyRing
from rateguard.embedded.servers import free_port
from tests.integration.control import ENCRYPTION_KEY

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def receiver():
    """A webhook receiver on 127.0.0.1 recording the Authorization it gets."""
    seen: list[str | None] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, seen
    await runner.cleanup()


async def test_webhook_url_credentials_are_sealed_and_masked(plane, receiver):
    port, seen = receiver
    owner = await plane.signup("hooks")
    viewer = await plane.member(owner, "viewer")
    base = f"/workspaces/{owner.workspace_id}/alerts/channels"
    url = f"http://hookuser:s3cr3t-pass@127.0.0.1:{port}/hook"
    status, created = await plane.call("POST", base, owner, json={
        "name": "with creds", "kind": "webhook", "url": url})
    assert status == 201, created
    masked = f"http://***:***@127.0.0.1:{port}/hook"
    assert created["config"]["url"] == masked
    for who in (owner, viewer):
        status, listed = await plane.call("GET", base, who)
        assert status == 200
        text = str(listed)
        assert "s3cr3t-pass" not in text and "hookuser" not in text
        assert [c["config"]["url"] for c in listed["items"]] == [masked]

    # at rest: the configuration holds the masked URL; the real one is sealed
    conn = await asyncpg.connect(plane.database_url)
    try:
        row = await conn.fetchrow("SELECT config::text, url_credentials FROM"
                                  " notification_channels WHERE id = $1", created["id"])
    finally:
        await conn.close()
    assert "s3cr3t-pass" not in row["config"] and "hookuser" not in row["config"]
    assert "s3cr3t-pass" not in row["url_credentials"]
    assert KeyRing(ENCRYPTION_KEY).decrypt(row["url_credentials"],
                                           f"channel:{created['id']}:url") == url

    # delivery uses the real URL: the receiver gets the credentials
    status, result = await plane.call("POST", f"{base}/{created['id']}/test", owner)
    assert status == 200 and result["ok"], result
    assert seen == ["Basic " + base64.b64encode(b"hookuser:s3cr3t-pass").decode()]

    # a URL without credentials is shown as it is
    status, plain = await plane.call("POST", base, owner, json={
        "name": "plain", "kind": "webhook", "url": f"http://127.0.0.1:{port}/hook"})
    assert status == 201 and plain["config"]["url"] == f"http://127.0.0.1:{port}/hook"
    # a user name alone (a token, often) is masked too
    status, token_only = await plane.call("POST", base, owner, json={
        "name": "token", "kind": "webhook", "url": f"http://tok3n@127.0.0.1:{port}/hook"})
    assert status == 201 and token_only["config"]["url"] == f"http://***@127.0.0.1:{port}/hook"


async def test_an_invitation_accepted_by_a_member_is_refused_and_stays_pending(plane):
    owner = await plane.signup("inviter")
    member = await plane.member(owner, "viewer")
    base = f"/workspaces/{owner.workspace_id}/invitations"
    status, invitation = await plane.call("POST", base, owner,
                                          json={"email": member.email, "role": "admin"})
    assert status == 201
    status, body = await plane.call("POST", "/invitations/accept", member,
                                    json={"token": invitation["token"]})
    assert status == 409 and body["field"] == "invitation", body
    assert "already a member" in body["message"]
    status, listed = await plane.call("GET", base, owner)
    mine = next(i for i in listed["items"] if i["id"] == invitation["id"])
    assert mine["accepted_at"] is None and mine["revoked_at"] is None
    status, me = await plane.call("GET", "/me", member)
    assert [w["role"] for w in me["workspaces"] if w["id"] == owner.workspace_id] == ["viewer"]

    # someone else (another address) learns nothing: the same answer as a made-up token
    stranger = await plane.signup("stranger")
    status, body = await plane.call("POST", "/invitations/accept", stranger,
                                    json={"token": invitation["token"]})
    assert status == 422
    # a user who is not a member yet accepts as before
    newcomer = await plane.signup("newcomer")
    status, invitation = await plane.call("POST", base, owner,
                                          json={"email": newcomer.email, "role": "viewer"})
    status, workspace = await plane.call("POST", "/invitations/accept", newcomer,
                                         json={"token": invitation["token"]})
    assert status == 200 and workspace["id"] == owner.workspace_id
