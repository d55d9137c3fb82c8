"""Hostile input at the proxy, over raw sockets: every malformed or abusive request
gets a 4xx JSON answer (or a closed connection), never a 500, never a crash, and no
path trick leaves an API's prefix or reaches another workspace's upstream.

Timeouts are shortened here (PROXY_HEAD_TIMEOUT, PROXY_BODY_TIMEOUT = 1 s)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import pytest_asyncio

from tests.faults.conftest import Keys, unique
from tests.servers import ProxyProcess, Upstream, fetch, raw_exchange

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def other_upstream():
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def hostile(workdir, fenv, upstream, other_upstream):
    keys = Keys()
    config = {"workspaces": [
        {"id": "wa", "apis": [
            {"id": "a", "prefix": "/a", "upstream": upstream.url + "/a-base",
             "max_body_bytes": 4096}],
         "keys": [keys.entry("a")]},
        {"id": "wb", "apis": [
            {"id": "b", "prefix": "/b", "upstream": other_upstream.url + "/b-base"}],
         "keys": [keys.entry("b")]},
    ]}
    proxy = ProxyProcess(config, {**fenv, "PROXY_HEAD_TIMEOUT": "1", "PROXY_BODY_TIMEOUT": "1"},
                         workdir, unique("hostile"))
    proxy.keys = keys
    yield proxy.start()
    proxy.stop()


async def exchange(proxy, raw: bytes, **options) -> bytes:
    """Raw bytes to the proxy (``raw_exchange``: ``wait``, ``pause``, ``rest``)."""
    return await raw_exchange(proxy.port, raw, **options)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def json_body(response: bytes) -> dict:
    return orjson.loads(response.split(b"\r\n\r\n", 1)[1])


def head(key: str, path: str = "/a/x", extra: bytes = b"") -> bytes:
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n" + extra + b"\r\n")


@pytest.mark.parametrize("raw,expected", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /a/x HTTP/9.9\r\nHost: gw\r\n\r\n", 400),
    (b"GET /a/x\x00y HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\nX-Evil: a\rInjected: 1\r\n\r\n", 400),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\nX-Evil: a\nInjected: 1\r\n\r\n", 400),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\nX-Fold: a\r\n folded\r\n\r\n", 400),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\nBad Name: 1\r\n\r\n", 400),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
    (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n", 400),
    (b"GET /a/" + b"x" * 40000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 431),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\n" + b"X-Big: " + b"y" * 40000 + b"\r\n\r\n", 431),
    (b"GET /a/x HTTP/1.1\r\nHost: gw\r\n" + b"X-Many: 1234567890\r\n" * 3000 + b"\r\n", 431),
    (b"GET http://evil.example/a/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 400),
    (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 405),  # no tunnels
    (b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", 400),
])
async def test_malformed_requests_get_a_4xx_json_answer(hostile, raw, expected):
    response = await exchange(hostile, raw)
    assert status_of(response) == expected, response[:300]
    assert json_body(response)["error"]


async def test_broken_chunked_body_after_the_request_started_gets_400(hostile, upstream):
    key = hostile.keys.plain["a"]
    raw = (b"POST /a/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key.encode()
           + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    response = await exchange(hostile, raw, pause=0.3, rest=b"nothex\r\n")
    assert status_of(response) in (400, 502), response[:300]
    assert status_of(response) != 500


async def test_oversized_bodies_get_413(hostile):
    key = hostile.keys.plain["a"].encode()
    declared = (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key
                + b"\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000)
    assert status_of(await exchange(hostile, declared)) == 413
    chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
    streamed = (b"POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + key
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4 + b"0\r\n\r\n")
    response = await exchange(hostile, streamed)
    assert status_of(response) == 413 and json_body(response)["error"] == "body_too_large"


async def test_slow_clients_are_cut_with_408(hostile):
    started = time.monotonic()
    response = await exchange(hostile, b"GET /a/x HTTP/1.1\r\nHost: gw\r\n", wait=6)
    assert status_of(response) == 408 and time.monotonic() - started < 4

    started = time.monotonic()
    response = await exchange(hostile, b"", wait=6)  # connects, says nothing
    assert status_of(response) == 408 and time.monotonic() - started < 4

    key = hostile.keys.plain["a"].encode()
    started = time.monotonic()
    response = await exchange(hostile, b"POST /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: "
                              b"Bearer " + key + b"\r\nContent-Length: 100\r\n\r\nabc", wait=6)
    assert status_of(response) == 408 and time.monotonic() - started < 4
    assert json_body(response)["error"] == "request_timeout"


TRICKS = [
    "/a/../b/x", "/a/%2e%2e/b/x", "/a/%2E%2e%2Fb/x", "/a/.%2e/b/x", "/a/%252e%252e/b/x",
    "/a/%25252e%25252e/b/x", "/a/..;/b/x", "/a/..%3b/b/x", "/a/..%5cb/x", "/a\\..\\b/x",
    "/a%2f..%2fb/x", "/a/%2e%2e%2f%2e%2e/b/x", "//b/x", "/a//../b/x", "/a/./../b/x",
    "/a%2fb/x", "/a/x/%2e%2e", "/a/%c0%ae%c0%ae/b",
]


@pytest.mark.parametrize("path", TRICKS)
async def test_path_tricks_never_leave_the_prefix_or_the_workspace(
        hostile, session, other_upstream, path):
    calls_b = other_upstream.calls
    response = await exchange(hostile, head(hostile.keys.plain["a"], path))
    status = status_of(response)
    assert status in (200, 400, 401, 404), response[:300]
    if status == 200:
        seen = json_body(response)["path"]
        assert seen.startswith("/a-base/"), seen
        from urllib.parse import unquote
        decoded = unquote(unquote(unquote(seen)))
        assert "/.." not in decoded and "/b-base" not in decoded, seen
    assert other_upstream.calls == calls_b, "another workspace's upstream was reached"


async def test_the_proxy_survives_all_of_it(hostile, session):
    # A burst of every malformed request at once, then normal service.
    raws = [b"GARBAGE\r\n\r\n", b"GET /a/x HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"POST /a/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            head(hostile.keys.plain["a"], "/a/%2e%2e/b"), b"\x16\x03\x01\x02\x00\x01\x00"]
    await asyncio.gather(*(exchange(hostile, raw, wait=2) for raw in raws * 10))
    assert hostile.proc.poll() is None, "the proxy died"
    status, _, _ = await fetch(session, "GET", f"{hostile.url}/healthz")
    assert status == 200
    status, _, body = await fetch(session, "GET", f"{hostile.url}/a/fine",
                                  headers=hostile.keys.auth("a"))
    assert status == 200 and orjson.loads(body)["path"] == "/a-base/fine"
    log = hostile.log()
    assert "Traceback" not in log and "unexpected error" not in log
