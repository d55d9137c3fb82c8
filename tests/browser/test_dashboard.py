"""The dashboard end to end in headless Chromium: sign up, create a policy, an API and a
key, send real traffic through a real proxy following PostgreSQL, see it in the
analytics charts and tables (and auto refresh), revoke the key in the UI and see the
proxy answer 401; plus members, alerts, audit, the workspace switcher and sign-in."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import shoot
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"


async def proxy_status(http: aiohttp.ClientSession, url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def until_status(http, url: str, key: str, expected: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        status = await proxy_status(http, url, key)
        elapsed = time.monotonic() - started
        if status == expected:
            return elapsed
        assert elapsed < timeout, f"after {elapsed:.1f}s the proxy answers {status}"
        await asyncio.sleep(0.05)


async def nav(page: Page, section: str) -> None:
    await page.get_by_role("navigation", name="Sections").get_by_role(
        "link", name=section, exact=True).click()
    await expect(page.get_by_role("navigation", name="Sections").locator(
        "a.active")).to_have_text(section)


async def sign_up(page: Page, email: str, name: str, workspace: str) -> str:
    await page.goto("/signup")
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Workspace name").fill(workspace)
    await page.get_by_role("button", name="Create account").click()
    await expect(page).to_have_url(re.compile(r"/w/ws_[0-9a-f]+/apis"))
    return page.url.split("/w/")[1].split("/")[0]


async def test_from_sign_up_to_traffic_analytics_and_revocation(
        page: Page, dashboard, start_proxy, upstream, screenshots):
    email = f"ops-{uuid.uuid4().hex[:6]}@example.com"
    await page.goto("/signup")
    await shoot(page, "01-sign-up", screenshots)
    ws = await sign_up(page, email, "Ada Ops", "Acme production")
    await expect(page.get_by_text("Welcome to RateGuard")).to_be_visible()
    await expect(page.locator("#workspace-switch")).to_contain_text("Acme production")
    await shoot(page, "02-apis-empty", screenshots)

    # A policy: 20 requests a minute per key, exact.
    await nav(page, "Policies")
    await expect(page.get_by_text("No policies yet")).to_be_visible()
    form = page.locator("#create-policy")
    await form.get_by_label("Name").fill("standard")
    await form.get_by_label("Limits").fill("20/min, 1000/h")
    await form.get_by_label("Algorithm").select_option("sliding_log")
    await form.get_by_role("button", name="Create policy").click()
    await expect(page.get_by_text("Policy created")).to_be_visible()
    # A malformed limit is refused with the field named.
    await form.get_by_label("Name").fill("broken")
    await form.get_by_label("Limits").fill("ten per second")
    await form.get_by_role("button", name="Create policy").click()
    await expect(page.locator(".flash.error")).to_contain_text("limits")
    await expect(page.locator("#create-policy input[name=limits]")).to_have_class(
        re.compile("invalid"))
    await nav(page, "Policies")
    await expect(page.locator("table")).to_contain_text("20/min")
    await shoot(page, "03-policies", screenshots)

    # An API in front of the test upstream, with the policy attached.
    prefix = f"/orders-{uuid.uuid4().hex[:6]}"
    await nav(page, "APIs")
    form = page.locator("#create-api")
    await form.get_by_label("Name").fill("Orders")
    await form.get_by_label("Upstream URL").fill(upstream.url + "/v0")
    await form.get_by_label("Path prefix").fill(prefix)
    await form.get_by_label("Policy").select_option(label="standard — 20/min, 1000/h")
    await form.get_by_role("button", name="Create API").click()
    await expect(page.get_by_text("API created")).to_be_visible()
    row = page.locator("tbody tr", has_text="Orders")
    await expect(row).to_contain_text(prefix)
    await expect(row).to_contain_text("standard")
    await shoot(page, "04-apis", screenshots)

    # Edit its upstream (drop the /v0 path) and add an upstream credential.
    await row.get_by_role("link", name="Edit").click()
    form = page.locator("#edit-api")
    await expect(form.get_by_label("Upstream URL")).to_have_value(upstream.url + "/v0")
    await form.get_by_label("Upstream URL").fill(upstream.url)
    await form.get_by_label("Upstream headers").fill("X-Upstream-Token: s3cret")
    await form.get_by_label("Timeout (seconds)").fill("10")
    await shoot(page, "05-api-edit", screenshots)
    await form.get_by_role("button", name="Save").click()
    await expect(page.get_by_text("API saved")).to_be_visible()
    await expect(page.locator("tbody tr", has_text="Orders")).not_to_contain_text("/v0")
    assert "s3cret" not in await page.content()

    # A key: shown once, with a copy button.
    await nav(page, "Keys")
    await expect(page.get_by_text("No keys yet")).to_be_visible()
    await page.locator("#create-key").get_by_label("Name").fill("mobile-app")
    await page.get_by_role("button", name="Create key").click()
    secret = (await page.locator("#secret").inner_text()).strip()
    assert re.fullmatch(r"rg_[A-Za-z0-9_-]{20,}", secret), secret
    await expect(page.get_by_text("shown only this once")).to_be_visible()
    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await shoot(page, "06-key-reveal", screenshots)
    await page.get_by_role("link", name="Done, back to keys").click()
    key_row = page.locator("tbody tr", has_text="mobile-app")
    await expect(key_row).to_contain_text(secret[:8] + "…" + secret[-4:])
    await expect(key_row).to_contain_text("active")
    await expect(key_row.locator("td").nth(4)).to_have_text("never")
    assert secret not in await page.content()  # never again after the reveal

    # Real traffic through a real proxy that follows PostgreSQL.
    proxy = start_proxy()
    base = proxy.url + prefix
    async with aiohttp.ClientSession() as http:
        await until_status(http, base + "/items/1", secret, 200, timeout=10)
        statuses = [await proxy_status(http, base + path, secret)
                    for path in ["/items/1"] * 9 + ["/items/2"] * 6 + ["/users"] * 2
                    + ["/status/500"] * 2 + ["/items/1"] * 5]
        assert statuses.count(429) == 5 and statuses.count(500) == 2, statuses
        assert await proxy_status(http, base + "/items/1", "rg_not_a_real_key") == 401
        sent = 1 + len(statuses) + 1

        # Wait until ClickHouse has them all, then look.
        login = await dashboard.call("POST", "/auth/login",
                                     json={"email": email, "password": PASSWORD})
        token = {"Authorization": f"Bearer {login[1]['access_token']}"}

        async def stored(n: int):
            status, body = await dashboard.call(
                "GET", f"/workspaces/{ws}/analytics/decisions", headers=token)
            return status == 200 and body["total"] >= n
        assert await wait_until(lambda: stored(sent), timeout=20)

        await page.clock.install()
        await nav(page, "Analytics")
        await expect(page.locator("#stat-total")).to_have_text(str(sent))
        await expect(page.locator("#stat-limited")).to_have_text(f"{5 / sent * 100:.1f}%")
        top_keys = page.locator("#top-keys")
        await expect(top_keys.locator("tbody tr").first).to_contain_text("mobile-app")
        await expect(top_keys.locator("tbody tr").first).to_contain_text(str(sent - 1))
        top_paths = page.locator("#top-paths")
        await expect(top_paths.locator("tbody tr").first).to_contain_text("/items/1")
        chart = page.locator("#chart-requests svg.chart-wide")
        await expect(chart.locator("rect.s-2xx").first).to_be_visible()
        await expect(chart.locator("rect.s-4xx")).not_to_have_count(0)
        await expect(chart.locator("rect.s-5xx")).not_to_have_count(0)
        await expect(chart.locator("text.unit").first).to_have_text("req/s")
        await expect(page.locator("#chart-requests .legend")).to_contain_text("5xx")
        latency = page.locator("#chart-latency svg.chart-wide")
        await expect(latency.locator("circle.s-p99")).not_to_have_count(0)
        await expect(latency.locator("text.unit").first).to_have_text("ms")
        await expect(page.locator("#decisions")).to_contain_text("Unauthorized")
        await shoot(page, "07-analytics", screenshots)

        # Auto refresh: three more requests appear without reloading the page.
        await page.get_by_label("Auto refresh").select_option("5s")
        for _ in range(3):
            assert await proxy_status(http, base + "/users", None) == 401
        assert await wait_until(lambda: stored(sent + 3), timeout=20)
        await page.clock.run_for(5_500)
        await expect(page.locator("#stat-total")).to_have_text(str(sent + 3))

        # The time-range picker and the API filter keep working on the same data.
        await page.get_by_role("link", name="15m").click()
        await expect(page).to_have_url(re.compile(r"range=15m"))
        await expect(page.locator("#stat-total")).to_have_text(str(sent + 3))
        await page.get_by_label("API", exact=True).select_option(label="Orders")
        await expect(page).to_have_url(re.compile(r"api_id=api_"))
        await expect(page.locator("#stat-total")).to_have_text(str(sent + 3))

        # last_used_at arrives from the events.
        async def used():
            _, keys = await dashboard.call("GET", f"/workspaces/{ws}/keys", headers=token)
            return keys["items"][0]["last_used_at"] is not None
        assert await wait_until(used, timeout=10)
        await nav(page, "Keys")
        await expect(key_row.locator("td").nth(4)).to_have_text(re.compile(r"just now|ago"))
        await shoot(page, "08-keys", screenshots)

        # Revoke in the UI: the proxy answers 401 within two seconds.
        page.once("dialog", lambda dialog: dialog.accept())
        await key_row.get_by_role("button", name="Revoke").click()
        await expect(page.get_by_text("Key revoked")).to_be_visible()
        await expect(key_row).to_contain_text("revoked")
        elapsed = await until_status(http, base + "/items/1", secret, 401, timeout=2.0)
        assert elapsed < 2.0

    await nav(page, "Audit log")
    audit = page.locator("table.audit")
    await expect(audit.locator("tbody tr").first).to_contain_text("key.revoke")
    for action in ("key.create", "api.update", "api.create", "policy.create", "user.signup"):
        await expect(audit).to_contain_text(action)
    assert secret not in await page.content() and "s3cret" not in await page.content()
    await shoot(page, "09-audit", screenshots)


async def test_roll_members_alerts_switcher_and_sign_in(page: Page, screenshots):
    email = f"lead-{uuid.uuid4().hex[:6]}@example.com"
    ws = await sign_up(page, email, "Lin Lead", "Payments")

    # Roll a key: a new one is revealed; the old one keeps working for the overlap.
    await nav(page, "Keys")
    await page.locator("#create-key").get_by_label("Name").fill("backend")
    await page.get_by_role("button", name="Create key").click()
    first = (await page.locator("#secret").inner_text()).strip()
    await page.get_by_role("link", name="Done, back to keys").click()
    page.once("dialog", lambda dialog: dialog.accept())
    await page.locator("tbody tr", has_text="backend").get_by_role("button",
                                                                   name="Roll").click()
    await expect(page.get_by_role("heading", name="Key rolled: backend")).to_be_visible()
    second = (await page.locator("#secret").inner_text()).strip()
    assert second != first and second.startswith("rg_")
    await expect(page.get_by_text("keeps working until")).to_be_visible()
    await page.get_by_role("link", name="Done, back to keys").click()
    await expect(page.locator("tbody tr")).to_have_count(2)
    await expect(page.locator("tbody tr").nth(1)).to_contain_text("rolled")

    # Members: invite a teammate; the link is shown once.
    await nav(page, "Members")
    await expect(page.locator("tbody tr")).to_contain_text("(you)")
    await page.locator("#invite").get_by_label("Email").fill("sam@example.com")
    await page.locator("#invite").get_by_label("Role").select_option("admin")
    await page.get_by_role("button", name="Create invitation").click()
    link = (await page.locator("#invite-link").inner_text()).strip()
    assert "/signup?invitation=" in link
    await expect(page.get_by_text("Pending invitations")).to_be_visible()
    await shoot(page, "10-members", screenshots)

    # Alerts: a webhook channel (its signing secret shown once) and a rule.
    await nav(page, "Alerts")
    await expect(page.get_by_text("No alert rules yet")).to_be_visible()
    channel = page.locator("#create-channel")
    await channel.get_by_label("Name").fill("on-call")
    await channel.get_by_label("URL").fill("https://hooks.example.com/rateguard")
    await channel.get_by_role("button", name="Add channel").click()
    await expect(page.get_by_text("Copy the webhook signing secret now")).to_be_visible()
    rule = page.locator("#create-rule")
    await rule.get_by_label("Name").fill("Too many errors")
    await rule.get_by_label("Metric").select_option("error_rate")
    await rule.get_by_label("Threshold").fill("0.05")
    await rule.get_by_label("on-call").check()
    await rule.get_by_role("button", name="Create rule").click()
    await expect(page.get_by_text("Alert rule created")).to_be_visible()
    await expect(page.locator("tbody tr", has_text="Too many errors")).to_contain_text(
        "error_rate above 0.05")
    await shoot(page, "11-alerts", screenshots)

    # Analytics of a workspace without traffic explains what to do.
    await nav(page, "Analytics")
    await expect(page.get_by_text("No requests in the last 1h")).to_be_visible()
    await expect(page.locator("#chart-requests svg.chart-wide text.empty")).to_be_visible()
    await shoot(page, "12-analytics-empty", screenshots)

    # A second workspace, then the switcher back to the first.
    await page.get_by_role("link", name="+ Workspace").click()
    await page.get_by_label("Name").fill("Staging")
    await page.get_by_role("button", name="Create workspace").click()
    await expect(page.locator("#workspace-switch")).to_have_value(re.compile(r"ws_"))
    await expect(page.locator("#workspace-switch option:checked")).to_contain_text("Staging")
    await shoot(page, "13-new-workspace-apis", screenshots)
    await page.locator("#workspace-switch").select_option(ws)
    await expect(page).to_have_url(re.compile(f"/w/{ws}/apis"))
    await expect(page.locator("#workspace-switch option:checked")).to_contain_text("Payments")

    # Sign out, a wrong password, then sign in back to where we were going.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/signin$"))
    await page.goto(f"/w/{ws}/audit")
    await expect(page).to_have_url(re.compile(r"/signin\?next="))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".flash.error")).to_have_text("Wrong email or password.")
    await shoot(page, "14-sign-in-error", screenshots)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(f"/w/{ws}/audit"))
    await expect(page.locator("table.audit")).to_contain_text("invitation.create")
