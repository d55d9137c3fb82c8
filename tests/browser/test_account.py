"""The account pages in the browser: change password (other sessions end), sessions
ended one by one and everywhere, a one-time reset link, and an operator disabling a user
whose open dashboard stops working at once."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from rateguard.db.connection import create_pool
from rateguard.db.repository import Actor, Repository
from tests.browser.conftest import shoot
from tests.browser.test_dashboard import PASSWORD

pytestmark = pytest.mark.integration

NEW = "a much better passphrase"


async def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/signin")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/w/ws_[0-9a-f]+/"))


async def with_repo(dashboard, action):
    pool = await create_pool(dashboard.database_url, min_size=1, max_size=1)
    try:
        return await action(Repository(pool))
    finally:
        await pool.close()


async def test_change_password_signs_out_the_other_sessions(page: Page, dashboard,
                                                            screenshots):
    user = await dashboard.signup("pwpage")  # an API session besides the browser's
    await sign_in(page, user.email)
    await page.get_by_role("link", name="Account").click()
    await expect(page).to_have_url(re.compile(r"/account$"))
    await expect(page.locator("#sessions tbody tr")).to_have_count(2)
    await expect(page.locator("#sessions")).to_contain_text("this session")
    await shoot(page, "account", screenshots)

    await page.get_by_label("Current password").fill("wrong password")
    await page.get_by_label("New password", exact=True).fill(NEW)
    await page.get_by_label("New password again").fill(NEW)
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("alert")).to_contain_text("not the current password")
    assert (await dashboard.call("GET", "/me", user))[0] == 200

    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password", exact=True).fill(NEW)
    await page.get_by_label("New password again").fill(NEW + "x")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("alert")).to_contain_text("differ")

    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password", exact=True).fill(NEW)
    await page.get_by_label("New password again").fill(NEW)
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("status")).to_contain_text(
        "Password changed. 1 other session signed out.")
    await expect(page.locator("#sessions tbody tr")).to_have_count(1)
    assert (await dashboard.call("GET", "/me", user))[0] == 401  # the API session ended

    await page.get_by_role("button", name="Sign out", exact=True).click()
    await page.get_by_label("Email").fill(user.email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("Wrong email or password")
    await sign_in(page, user.email, NEW)


async def test_end_a_session_and_sign_out_everywhere(page: Page, browser, dashboard):
    user = await dashboard.signup("sespage")
    await sign_in(page, user.email)
    other = await browser.new_context(base_url=dashboard.url)
    try:
        laptop = await other.new_page()
        await sign_in(laptop, user.email)
        await page.goto("/account")
        await expect(page.locator("#sessions tbody tr")).to_have_count(3)
        # end the laptop's session (the newest, listed first after this one's order)
        rows = page.locator("#sessions tbody tr", has=page.get_by_role("button", name="End"))
        await expect(rows).to_have_count(2)
        for _ in range(2):
            await rows.first.get_by_role("button", name="End").click()
            await expect(page.get_by_role("status")).to_contain_text("Session ended")
        await expect(page.locator("#sessions tbody tr")).to_have_count(1)
        assert (await dashboard.call("GET", "/me", user))[0] == 401
        await laptop.goto("/account")
        await expect(laptop).to_have_url(re.compile(r"/signin\?next="))

        await sign_in(laptop, user.email)
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Sign out everywhere").click()
        await expect(page).to_have_url(re.compile(r"/signin$"))
        await laptop.goto("/account")
        await expect(laptop).to_have_url(re.compile(r"/signin\?next="))
    finally:
        await other.close()


async def test_a_reset_link_sets_a_new_password(page: Page, dashboard, screenshots):
    user = await dashboard.signup("resetpage")
    link = await with_repo(dashboard, lambda repo: repo.create_password_reset(
        Actor.cli(), user.user_id))
    await page.goto(f"/reset-password?token={link['token']}")
    await shoot(page, "reset-password", screenshots)
    await page.get_by_label("New password", exact=True).fill(NEW)
    await page.get_by_label("New password again").fill(NEW)
    await page.get_by_role("button", name="Set password").click()
    await expect(page.get_by_role("status")).to_contain_text("Password changed")
    assert (await dashboard.call("GET", "/me", user))[0] == 401
    # the link works once
    await page.goto(f"/reset-password?token={link['token']}")
    await page.get_by_label("New password", exact=True).fill("yet another one")
    await page.get_by_label("New password again").fill("yet another one")
    await page.get_by_role("button", name="Set password").click()
    await expect(page.get_by_role("alert")).to_contain_text("not a valid reset link")
    await sign_in(page, user.email, NEW)


async def test_an_operator_disables_a_user(page: Page, browser, dashboard, screenshots):
    operator = await dashboard.signup("oppage")
    victim = await dashboard.signup("victimpage")
    await sign_in(page, operator.email)
    response = await page.goto("/users")
    assert response.status == 403  # a workspace owner is not an instance operator
    await with_repo(dashboard, lambda repo: repo.set_operator(
        Actor.cli(), operator.user_id, True))

    other = await browser.new_context(base_url=dashboard.url)
    try:
        theirs = await other.new_page()
        await sign_in(theirs, victim.email)
        await page.goto("/users")
        row = page.locator("#users tbody tr", has_text=victim.email)
        await expect(row).to_contain_text("active")
        await shoot(page, "users", screenshots)
        page.once("dialog", lambda dialog: dialog.accept())
        await row.get_by_role("button", name="Disable").click()
        await expect(page.get_by_role("status")).to_contain_text("User disabled")
        await expect(row).to_contain_text("disabled")
        await theirs.reload()
        await expect(theirs).to_have_url(re.compile(r"/signin\?next="))
        assert (await dashboard.call("GET", "/me", victim))[0] == 401

        await row.get_by_role("button", name="Enable").click()
        await expect(page.get_by_role("status")).to_contain_text("User enabled")
        await sign_in(theirs, victim.email)
    finally:
        await other.close()
