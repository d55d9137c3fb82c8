"""Accounts people can recover (issue 17): change password, sessions listed and ended,
sign out everywhere, refresh-token reuse, one-time reset links, disabled users, and the
operator's commands (`rateguard users ...`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import pytest_asyncio

from rateguard.db.connection import create_pool
from rateguard.db.repository import Actor, Repository
from tests.integration.control import Account, ControlPlane

pytestmark = pytest.mark.integration

NEW_PASSWORD = "a brand new passphrase"


@pytest_asyncio.fixture
async def repo(plane):
    pool = await create_pool(plane.database_url, min_size=1, max_size=2)
    yield Repository(pool)
    await pool.close()


async def login(plane: ControlPlane, email: str, password: str, **headers) -> Account:
    status, body = await plane.call("POST", "/auth/login", headers=headers,
                                    json={"email": email, "password": password})
    assert status == 200, body
    return Account(email, password, body)


async def refresh(plane: ControlPlane, token: str):
    return await plane.call("POST", "/auth/refresh", json={"refresh_token": token})


async def works(plane: ControlPlane, account: Account) -> bool:
    status, _ = await plane.call("GET", "/me", account)
    assert status in (200, 401)
    return status == 200


async def test_change_password_needs_the_current_one_and_ends_the_other_sessions(plane):
    user = await plane.signup("pw")
    other = await login(plane, user.email, user.password)
    status, body = await plane.call("POST", "/me/password", user, json={
        "current_password": "not it at all", "new_password": NEW_PASSWORD})
    assert status == 422 and body["field"] == "current_password"
    assert await works(plane, other)
    status, body = await plane.call("POST", "/me/password", user, json={
        "current_password": user.password, "new_password": "short"})
    assert status == 422 and body["field"] == "new_password"

    status, body = await plane.call("POST", "/me/password", user, json={
        "current_password": user.password, "new_password": NEW_PASSWORD})
    assert status == 200 and body == {"sessions_ended": 1}
    assert await works(plane, user)  # this session stays
    assert not await works(plane, other)  # the other one ended at once
    assert (await refresh(plane, other.refresh))[0] == 401
    status, _ = await plane.call("POST", "/auth/login",
                                 json={"email": user.email, "password": user.password})
    assert status == 401
    await login(plane, user.email, NEW_PASSWORD)


async def test_sessions_are_listed_and_ended_one_by_one(plane):
    user = await plane.signup("sessions")
    laptop = await login(plane, user.email, user.password, **{"User-Agent": "laptop/1.0"})
    status, body = await plane.call("GET", "/me/sessions", user)
    assert status == 200
    sessions = body["items"]
    assert len(sessions) == 2
    mine = [s for s in sessions if s["current"]]
    assert len(mine) == 1
    theirs = next(s for s in sessions if not s["current"])
    assert theirs["user_agent"] == "laptop/1.0" and theirs["client_ip"] == "127.0.0.1"

    # nobody else can end it, or even learn that it exists
    stranger = await plane.signup("stranger")
    status, _ = await plane.call("POST", f"/me/sessions/{theirs['id']}/revoke", stranger)
    assert status == 404
    assert await works(plane, laptop)

    status, _ = await plane.call("POST", f"/me/sessions/{theirs['id']}/revoke", user)
    assert status == 204
    assert not await works(plane, laptop)
    assert (await refresh(plane, laptop.refresh))[0] == 401
    assert await works(plane, user)
    status, body = await plane.call("GET", "/me/sessions", user)
    assert [s["current"] for s in body["items"]] == [True]
    status, _ = await plane.call("POST", f"/me/sessions/{theirs['id']}/revoke", user)
    assert status == 404


async def test_sign_out_everywhere(plane):
    user = await plane.signup("everywhere")
    others = [await login(plane, user.email, user.password) for _ in range(2)]
    status, body = await plane.call("POST", "/auth/logout-all", user)
    assert status == 200 and body == {"sessions_ended": 3}
    for account in (user, *others):
        assert not await works(plane, account)
        assert (await refresh(plane, account.refresh))[0] == 401


async def test_a_reused_refresh_token_ends_the_session(plane):
    user = await plane.signup("reuse")
    status, rotated = await refresh(plane, user.refresh)
    assert status == 200
    # the stolen copy of the first refresh token is presented again
    status, body = await refresh(plane, user.refresh)
    assert status == 401
    # the whole session is over: the rotated refresh token and both access tokens
    assert (await refresh(plane, rotated["refresh_token"]))[0] == 401
    assert not await works(plane, user)
    assert not await works(plane, Account(user.email, user.password, rotated))
    # other sessions of the user are not touched
    again = await login(plane, user.email, user.password)
    assert await works(plane, again)


async def test_a_reset_link_works_once_and_ends_every_session(plane, repo):
    user = await plane.signup("reset")
    link = await repo.create_password_reset(Actor.cli(), user.user_id)
    status, body = await plane.call("POST", "/auth/reset-password",
                                    json={"token": link["token"], "password": "short"})
    assert status == 422 and body["field"] == "password"
    status, _ = await plane.call("POST", "/auth/reset-password",
                                 json={"token": link["token"], "password": NEW_PASSWORD})
    assert status == 204
    assert not await works(plane, user)
    status, body = await plane.call("POST", "/auth/reset-password",
                                    json={"token": link["token"], "password": NEW_PASSWORD})
    assert status == 422 and body["field"] == "token"
    await login(plane, user.email, NEW_PASSWORD)
    # a newer link replaces an older one
    first = await repo.create_password_reset(Actor.cli(), user.user_id)
    second = await repo.create_password_reset(Actor.cli(), user.user_id)
    status, _ = await plane.call("POST", "/auth/reset-password",
                                 json={"token": first["token"], "password": "another one!"})
    assert status == 422
    status, _ = await plane.call("POST", "/auth/reset-password",
                                 json={"token": second["token"], "password": "another one!"})
    assert status == 204


async def test_operators_disable_and_enable_users_and_tokens_stop_at_once(plane, repo):
    operator = await plane.signup("operator")
    victim = await plane.signup("leaked")
    status, body = await plane.call("GET", "/users", operator)
    assert status == 403  # not an operator yet: workspace owners are not
    status, _ = await plane.call("POST", f"/users/{victim.user_id}/disable", operator)
    assert status == 403
    await repo.set_operator(Actor.cli(), operator.user_id, True)

    status, body = await plane.call("GET", "/users", operator)
    assert status == 200
    listed = {u["id"]: u for u in body["items"]}
    assert listed[victim.user_id]["disabled_at"] is None
    assert listed[operator.user_id]["operator"] is True
    assert "password_hash" not in listed[victim.user_id]

    status, body = await plane.call("POST", f"/users/{victim.user_id}/disable", operator)
    assert status == 200 and body["disabled_at"] is not None
    assert not await works(plane, victim)  # the next request, not in 15 minutes
    assert (await refresh(plane, victim.refresh))[0] == 401
    status, _ = await plane.call("POST", "/auth/login",
                                 json={"email": victim.email, "password": victim.password})
    assert status == 401
    status, body = await plane.call("POST", f"/users/{operator.user_id}/disable", operator)
    assert status == 409
    status, _ = await plane.call("POST", "/users/usr_doesnotexist/disable", operator)
    assert status == 404

    status, body = await plane.call("POST", f"/users/{victim.user_id}/enable", operator)
    assert status == 200 and body["disabled_at"] is None
    assert not await works(plane, victim)  # ended sessions stay ended
    await login(plane, victim.email, victim.password)


async def test_the_openapi_document_lists_the_account_operations(plane):
    status, doc = await plane.call("GET", "/openapi.json")
    assert status == 200
    for path in ("/me/password", "/me/sessions", "/me/sessions/{session_id}/revoke",
                 "/auth/logout-all", "/auth/reset-password", "/users",
                 "/users/{user_id}/disable", "/users/{user_id}/enable"):
        assert "/api/v1" + path in doc["paths"], path


# -- the operator's commands ---------------------------------------------------------------

def cli(*args: str, env: dict[str, str], stdin: str | None = None):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "ENCRYPTION_KEY", "JWT_SECRET", "REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "rateguard", *args], env={**clean, **env},
                          input=stdin, capture_output=True, text=True, timeout=60)


async def test_users_commands(plane):
    user = await plane.signup("cli")
    env = {"DATABASE_URL": plane.database_url}

    result = cli("users", "reset-password", user.email, "--url", "https://rg.example.com",
                 env=env)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^https://rg\.example\.com/reset-password\?token=(rgp_[\w-]+)$",
                      result.stdout, re.M)
    assert match, result.stdout
    status, _ = await plane.call("POST", "/auth/reset-password",
                                 json={"token": match[1], "password": NEW_PASSWORD})
    assert status == 204
    assert not await works(plane, user)

    session = await login(plane, user.email, NEW_PASSWORD)
    result = cli("users", "reset-password", user.email, "--stdin", env=env,
                 stdin="set from stdin!\n")
    assert result.returncode == 0, result.stderr
    assert "1 session(s) ended" in result.stdout
    assert "set from stdin" not in result.stdout + result.stderr
    assert not await works(plane, session)
    session = await login(plane, user.email, "set from stdin!")

    result = cli("users", "sessions", user.email, env=env)
    assert result.returncode == 0 and session.refresh not in result.stdout
    assert "127.0.0.1" in result.stdout

    result = cli("users", "disable", user.email, env=env)
    assert result.returncode == 0 and "disabled" in result.stdout, result.stderr
    assert not await works(plane, session)
    result = cli("users", "list", env=env)
    assert re.search(re.escape(user.email) + r"\s*\|?\s*disabled", result.stdout), result.stdout
    result = cli("users", "enable", user.email, env=env)
    assert result.returncode == 0 and "enabled" in result.stdout
    session = await login(plane, user.email, "set from stdin!")

    result = cli("users", "sessions", user.email, "--end", env=env)
    assert result.returncode == 0 and "session(s) ended" in result.stdout
    assert not await works(plane, session)

    result = cli("users", "operator", user.email, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith(": operator")
    session = await login(plane, user.email, "set from stdin!")
    assert (await plane.call("GET", "/users", session))[0] == 200

    result = cli("users", "disable", "nobody@example.com", env=env)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    result = cli("users", "reset-password", user.email, "--stdin", env=env, stdin="short\n")
    assert result.returncode != 0 and "8 to 256" in result.stderr
