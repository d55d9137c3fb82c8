"""The management API's own defences: login throttling by RateGuard's limiter, and JWT
validation (no ``none``, no algorithm confusion, expiry enforced)."""

from __future__ import annotations

import base64
import logging
import time

import aiohttp

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


async def post_from(plane, address: str, path: str, body: dict):
    """POST from another loopback address (127.0.0.2 ...): another client."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(plane.api + path, json=body) as response:
            return response.status, response.headers, await response.json()


async def test_login_is_throttled_per_address_and_account_never_per_account_alone(
        plane, caplog):
    victim = await plane.signup("victim")
    caplog.set_level(logging.WARNING)
    statuses = []
    for _ in range(6):  # the attacker, from 127.0.0.1
        status, body = await plane.call("POST", "/auth/login",
                                        json={"email": victim.email, "password": "wrong"})
        statuses.append(status)
    assert statuses == [401] * 4 + [429] * 2
    async with plane.http.post(plane.api + "/auth/login", json={
            "email": victim.email, "password": victim.password}) as response:
        # throttled before the password is even checked: the right one waits too
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        body = await response.json()
        assert body["error"] == "rate_limited"
        assert "for this account from this address" in body["message"]
    # the victim, from their own address, is not locked out
    status, _, body = await post_from(plane, "127.0.0.2", "/auth/login",
                                      {"email": victim.email, "password": victim.password})
    assert status == 200, body
    # each failed sign-in is logged once, naming neither the email nor the password
    failed = [r.getMessage() for r in caplog.records if "sign-in failed" in r.getMessage()]
    assert len(failed) == 4 and all("127.0.0.1" in line for line in failed)
    assert not any(victim.email in r.getMessage() or "wrong" in r.getMessage().split(":")[-1]
                   for r in caplog.records)

    # another account from the attacker's address: the per-address budget (8/min) is
    # shared by every attempt from 127.0.0.1, 7 of which are spent
    other = await plane.signup("other")
    status, _ = await plane.call("POST", "/auth/login",
                                 json={"email": other.email, "password": other.password})
    assert status == 200
    status, body = await plane.call("POST", "/auth/login",
                                    json={"email": other.email, "password": other.password})
    assert status == 429 and "from this address" in body["message"]
    status, headers, _ = await post_from(plane, "127.0.0.3", "/auth/login",
                                         {"email": other.email, "password": other.password})
    assert status == 200
    # the counters are in Redis under the control plane's hash tag
    from rateguard.limiter.redis_client import RedisClient
    client = RedisClient(plane.app_redis_url)
    try:
        keys = await client.execute("KEYS", "rg:{rateguard-control}:rl:login-*")
    finally:
        await client.close()
    assert keys


def test_ipv6_clients_are_counted_by_their_64():
    from rateguard.web.throttle import address_key

    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") \
        == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


async def test_csrf_refusals_are_logged_without_the_token(plane, caplog):
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as http:
        async with http.post(plane.url + "/signin", data={
                "csrf": "forged-token-value", "email": "a@example.com",
                "password": "secret password"}) as response:
            assert response.status == 403
        async with http.post(plane.url + "/signin", headers={"Origin": "https://evil.test"},
                             data={"csrf": "x", "email": "a@example.com"}) as response:
            assert response.status == 403
    lines = [r.getMessage() for r in caplog.records if "form refused" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "missing or wrong CSRF token" in lines[0] and "POST /signin" in lines[0]
    assert "cross-origin" in lines[1]
    text = " ".join(lines)
    assert "forged-token-value" not in text and "secret password" not in text


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


async def test_behind_a_trusted_ingress_each_client_has_its_own_sign_in_budget(
        new_database, redis_url):
    """With TRUSTED_PROXIES naming the ingress (127.0.0.1 here), the throttle counts
    the X-Forwarded-For client, not the ingress: one client's failures do not lock out
    the others behind it. From an untrusted peer the header is ignored, so an attacker
    cannot choose the address it is counted under. (Addresses no other test uses: the
    throttle's counters live in the shared Redis.)"""
    from rateguard.proxy.client_address import parse_networks

    behind = ControlPlane(await new_database(), redis_url=redis_url,
                          login_limits=("3/min", "100/min"),
                          trusted_proxies=parse_networks("127.0.0.1/32"))
    await behind.start()
    try:
        user = await behind.signup("behind")

        async def login(forwarded_for: str, password: str) -> int:
            async with behind.http.post(behind.api + "/auth/login", headers={
                    "X-Forwarded-For": forwarded_for},
                    json={"email": user.email, "password": password}) as response:
                return response.status

        assert [await login("203.0.113.7", "wrong") for _ in range(4)] == [401] * 3 + [429]
        assert await login("198.51.100.9", user.password) == 200  # another client
        # 127.0.0.9 is not trusted: its X-Forwarded-For is ignored, it counts as itself
        for _ in range(3):
            status, _, _ = await post_from(behind, "127.0.0.9", "/auth/login", {
                "email": user.email, "password": "wrong"})
            assert status == 401
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(behind.api + "/auth/login", headers={
                    "X-Forwarded-For": "192.0.2.55"},
                    json={"email": user.email, "password": user.password}) as response:
                assert response.status == 429  # still 127.0.0.9's spent budget
    finally:
        await behind.stop()
