"""The management API's own defences: login throttling by RateGuard's limiter, and JWT
validation (no ``none``, no algorithm confusion, expiry enforced)."""

from __future__ import annotations

import base64
import time

import jwt
import orjson
import pytest
import pytest_asyncio

from tests.integration.control import JWT_SECRET, ControlPlane

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, redis_url):
    control = ControlPlane(await new_database(), redis_url=redis_url,
                           login_limits=("8/min", "4/min"))
    await control.start()
    yield control
    await control.stop()


async def test_login_is_throttled_per_account_then_per_address(plane):
    victim = await plane.signup("victim")
    statuses = []
    for _ in range(6):
        status, body = await plane.call("POST", "/auth/login",
                                        json={"email": victim.email, "password": "wrong"})
        statuses.append(status)
    assert statuses == [401] * 4 + [429] * 2
    async with plane.http.post(plane.api + "/auth/login", json={
            "email": victim.email, "password": victim.password}) as response:
        # throttled before the password is even checked: the right one waits too
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert (await response.json())["error"] == "rate_limited"
    # another account from the same address: the per-address budget (8/min) is
    # shared by every attempt from 127.0.0.1, 7 of which are spent
    other = await plane.signup("other")
    status, _ = await plane.call("POST", "/auth/login",
                                 json={"email": other.email, "password": other.password})
    assert status == 200
    status, body = await plane.call("POST", "/auth/login",
                                    json={"email": other.email, "password": other.password})
    assert status == 429 and "this address" in body["message"]
    # the counters are in Redis under the control plane's hash tag
    from rateguard.limiter.redis_client import RedisClient
    client = RedisClient(plane.app_redis_url)
    try:
        keys = await client.execute("KEYS", "rg:{rateguard-control}:rl:login-*")
    finally:
        await client.close()
    assert keys


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def _hs512(claims: dict) -> str:
    import warnings

    with warnings.catch_warnings():  # PyJWT warns that the key is short for SHA-512
        warnings.simplefilter("ignore")
        return jwt.encode(claims, JWT_SECRET, algorithm="HS512")


async def test_tokens_that_must_be_refused(plane):
    account = await plane.signup("jwt")
    good = jwt.decode(account.access, options={"verify_signature": False})
    now = int(time.time())
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "wrong secret": jwt.encode(good, "not-the-secret-" + "y" * 32, algorithm="HS256"),
        "HS512 with the real secret": _hs512(good),
        "expired": jwt.encode({**good, "iat": now - 3600, "exp": now - 60}, JWT_SECRET,
                              algorithm="HS256"),
        "no expiry": jwt.encode({k: v for k, v in good.items() if k != "exp"}, JWT_SECRET,
                                algorithm="HS256"),
        "another issuer": jwt.encode({**good, "iss": "someone-else"}, JWT_SECRET,
                                     algorithm="HS256"),
    }
    status, _ = await plane.call("GET", "/me", headers={
        "Authorization": f"Bearer {account.access}"})
    assert status == 200
    for name, token in forged.items():
        status, body = await plane.call("GET", "/me",
                                        headers={"Authorization": f"Bearer {token}"})
        assert status == 401, name
        assert body["error"] == "unauthorized", name
