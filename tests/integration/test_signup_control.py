"""Who may create an account (SIGNUP=open|invite|closed) and sign-ups throttled per
address (issue 17)."""

from __future__ import annotations

import aiohttp
import pytest
import pytest_asyncio

from rateguard.db.connection import create_pool
from rateguard.db.repository import Repository
from rateguard.settings import Settings, SettingsError
from tests.integration.control import ControlPlane

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest_asyncio.fixture(scope="module")
async def database(new_database):
    return await new_database()


@pytest_asyncio.fixture
async def make_plane(database):
    planes = []

    async def make(**options) -> ControlPlane:
        plane = ControlPlane(database, **options)
        planes.append(await plane.start())
        return plane

    yield make
    for plane in planes:
        await plane.stop()


async def operator_made_owner(database: str, email: str) -> dict:
    """What `rateguard users create --workspace new` does."""
    pool = await create_pool(database, min_size=1, max_size=1)
    try:
        return await Repository(pool).create_user(email, PASSWORD, "", "new")
    finally:
        await pool.close()


async def page(plane: ControlPlane, path: str) -> str:
    async with plane.http.get(plane.url + path) as response:
        assert response.status == 200
        return await response.text()


def test_the_setting_defaults_to_invite_in_production():
    assert Settings.from_env({}).signup_mode == "invite"
    assert Settings.from_env({"RATEGUARD_ENV": "development"}).signup_mode == "open"
    assert Settings.from_env({"SIGNUP": "closed",
                              "RATEGUARD_ENV": "development"}).signup_mode == "closed"
    assert Settings.from_env({"SIGNUP": "open"}).signup_mode == "open"
    with pytest.raises(SettingsError, match="^SIGNUP: "):
        Settings.from_env({"SIGNUP": "sometimes"})


async def test_closed_signup_refuses_everyone_and_operators_still_make_accounts(
        make_plane, database):
    plane = await make_plane(signup="closed")
    status, body = await plane.call("POST", "/auth/signup", json={
        "email": "stranger@example.com", "password": PASSWORD})
    assert status == 403 and "rateguard users create" in body["message"]
    owner = await operator_made_owner(database, "closed-owner@example.com")
    status, session = await plane.call("POST", "/auth/login", json={
        "email": owner["email"], "password": PASSWORD})
    assert status == 200
    status, invitation = await plane.call(
        "POST", f"/workspaces/{owner['workspace']['id']}/invitations",
        headers={"Authorization": f"Bearer {session['access_token']}"},
        json={"email": "invited-closed@example.com", "role": "viewer"})
    assert status == 201
    status, _ = await plane.call("POST", "/auth/signup", json={
        "email": "invited-closed@example.com", "password": PASSWORD,
        "invitation": invitation["token"]})
    assert status == 403  # closed means closed, invitation or not
    assert "Create an account" not in await page(plane, "/signin")
    assert "created by its operator" in await page(plane, "/signup")


async def test_invite_signup_needs_an_invitation(make_plane, database):
    plane = await make_plane(signup="invite")
    status, body = await plane.call("POST", "/auth/signup", json={
        "email": "walk-in@example.com", "password": PASSWORD})
    assert status == 403 and "invitation" in body["message"]
    status, body = await plane.call("POST", "/auth/signup", json={
        "email": "walk-in@example.com", "password": PASSWORD, "invitation": "rgi_made_up"})
    assert status == 422 and body["field"] == "invitation"
    owner = await operator_made_owner(database, "invite-owner@example.com")
    status, session = await plane.call("POST", "/auth/login", json={
        "email": owner["email"], "password": PASSWORD})
    ws = owner["workspace"]["id"]
    status, invitation = await plane.call(
        "POST", f"/workspaces/{ws}/invitations",
        headers={"Authorization": f"Bearer {session['access_token']}"},
        json={"email": "teammate@example.com", "role": "admin"})
    assert status == 201
    status, body = await plane.call("POST", "/auth/signup", json={
        "email": "teammate@example.com", "password": PASSWORD,
        "invitation": invitation["token"]})
    assert status == 201 and body["workspace"]["id"] == ws
    assert "Create an account" not in await page(plane, "/signin")
    assert "needs an invitation" in await page(plane, "/signup")
    assert "Create account" in await page(plane, f"/signup?invitation={invitation['token']}")


async def test_open_signup_is_throttled_per_address(make_plane):
    plane = await make_plane(signup="open", signup_limit="3/h")
    for i in range(3):
        status, _ = await plane.call("POST", "/auth/signup", json={
            "email": f"burst-{i}@example.com", "password": PASSWORD})
        assert status == 201
    async with plane.http.post(plane.api + "/auth/signup", json={
            "email": "burst-3@example.com", "password": PASSWORD}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"] == "rate_limited"
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(plane.api + "/auth/signup", json={
                "email": "elsewhere@example.com", "password": PASSWORD}) as response:
            assert response.status == 201
    assert "Create an account" in await page(plane, "/signin")
