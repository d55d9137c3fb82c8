"""After sign-in the dashboard sends the browser to ``next`` only when it is a path on
this origin after the browser's own normalisation (issue 17: ``/%09/host/path`` and
``\\n`` used to end at ``Location: //host/path``)."""

from __future__ import annotations

import re

import aiohttp
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("next_,expected", [
    ("/w/x/apis?welcome=1", "/w/x/apis?welcome=1"),
    ("/%09/evil.example/path", "/"), ("/\t/evil.example/path", "/"),
    ("/\n/evil.example/path", "/"), ("/%0a/evil.example", "/"), ("//evil.example", "/"),
    ("/\\evil.example", "/"), ("/%5cevil.example", "/"), ("https://evil.example", "/"),
])
async def test_next_after_signin_stays_on_this_origin(plane, next_, expected):
    account = await plane.signup("redirect")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(plane.url + "/signin", params={"next": next_}) as page:
            html = await page.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)[1]
        async with browser.post(plane.url + "/signin", allow_redirects=False,
                                headers={"Origin": plane.url},
                                data={"csrf": csrf, "email": account.email,
                                      "password": account.password, "next": next_}) as done:
            assert done.status == 303, await done.text()
            assert done.headers["Location"] == expected
        # Signed in already: GET /signin?next=... redirects the same way.
        async with browser.get(plane.url + "/signin", params={"next": next_},
                               allow_redirects=False) as again:
            assert again.status in (302, 303) and again.headers["Location"] == expected
