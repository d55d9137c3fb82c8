"""The dashboard's security properties, checked over plain HTTP against the running app
and in the browser: cookie flags, CSP, CSRF, no secrets in pages, web sessions that the
API does not accept and that end at sign-out."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.browser.test_dashboard import PASSWORD, sign_up

pytestmark = pytest.mark.integration


async def test_cookies_headers_and_csrf(page: Page, dashboard):
    response = await page.goto("/signin")
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    await sign_up(page, f"sec-{uuid.uuid4().hex[:6]}@example.com", "Sec", "Sec")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["rg_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert not session["secure"]  # development; production sets Secure (see unit test)
    ws = re.search(r"/w/(ws_[0-9a-f]+)/", page.url).group(1)

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        jar.update_cookies({"rg_session": session["value"]},
                           response_url=aiohttp.client.URL(dashboard.url))
        # Signed in, but a form without its CSRF token is refused.
        async with http.post(f"{dashboard.url}/w/{ws}/policies",
                             data={"name": "x", "limits": "1/s"}) as r:
            assert r.status == 403 and "Form expired" in await r.text()
        async with http.get(f"{dashboard.url}/w/{ws}/policies") as r:
            html = await r.text()
            token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        # From another site, even with the token: refused.
        async with http.post(f"{dashboard.url}/w/{ws}/policies",
                             data={"csrf": token, "name": "x", "limits": "1/s"},
                             headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with http.post(f"{dashboard.url}/w/{ws}/policies", allow_redirects=False,
                             data={"csrf": token, "name": "ok", "limits": "1/s"}) as r:
            assert r.status == 303
        # The session cookie is not an API token.
        async with http.get(f"{dashboard.url}/api/v1/me",
                            headers={"Authorization": f"Bearer {session['value']}"}) as r:
            assert r.status == 401

    # Signing out ends the session on the server, not only in this browser.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/signin$"))
    await page.context.add_cookies([{**session}])
    await page.goto(f"/w/{ws}/keys")
    await expect(page).to_have_url(re.compile(r"/signin\?next="))


async def test_a_viewer_sees_but_cannot_change(page: Page, dashboard):
    owner = await dashboard.signup("owner")
    viewer = await dashboard.member(owner, "viewer")
    base = f"/workspaces/{owner.workspace_id}"
    await dashboard.call("POST", base + "/policies", owner,
                         json={"name": "standard", "limits": ["10/s"]})
    await page.goto("/signin")
    await page.get_by_label("Email").fill(viewer.email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.goto(f"/w/{owner.workspace_id}/policies")
    await expect(page.locator("table")).to_contain_text("standard")
    await expect(page.locator("#create-policy")).to_have_count(0)
    await page.goto(f"/w/{owner.workspace_id}/keys")
    await expect(page.locator("#create-key")).to_have_count(0)
    # A workspace the viewer is not in does not exist for them.
    other = await dashboard.signup("other")
    response = await page.goto(f"/w/{other.workspace_id}/keys")
    assert response.status == 404
    await expect(page.get_by_role("heading", name="Workspace not found")).to_be_visible()


async def test_an_invited_teammate_signs_up_into_the_workspace(page: Page, dashboard):
    owner = await dashboard.signup("inviter")
    email = f"mate-{uuid.uuid4().hex[:6]}@example.com"
    status, invitation = await dashboard.call(
        "POST", f"/workspaces/{owner.workspace_id}/invitations", owner,
        json={"email": email, "role": "admin"})
    assert status == 201
    await page.goto(f"/signup?invitation={invitation['token']}")
    await expect(page.get_by_text("You were invited to a workspace")).to_be_visible()
    await expect(page.get_by_label("Workspace name")).to_have_count(0)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page).to_have_url(re.compile(f"/w/{owner.workspace_id}/apis"))
    await expect(page.locator("#workspace-switch option:checked")).to_contain_text("(admin)")
