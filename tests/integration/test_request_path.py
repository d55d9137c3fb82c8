"""One request's whole path through a real proxy process, real Valkey and a real
upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os

import orjson
import pytest

from tests.servers import expected_bytes, fetch

pytestmark = pytest.mark.integration

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


async def test_allowed_request_reaches_upstream_with_ratelimit_headers(gateway, session):
    status, headers, body = await fetch(session, "GET", f"{gateway.url}/echo/hello?x=1",
                                        headers=gateway.keys.auth("three"))
    assert status == 200
    assert headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "2"
    assert 0 < int(headers["RateLimit-Reset"]) <= 60
    assert headers["RateLimit-Policy"] == "3;w=60"
    seen = orjson.loads(body)
    assert seen["path"] == "/hello"  # prefix stripped
    assert seen["query"] == "x=1"
    assert seen["headers"]["x-request-id"] == headers["X-Request-Id"]


async def test_429_exactly_after_the_limit_with_retry_after(gateway, session, upstream):
    auth = gateway.keys.auth("three")
    # the previous test may have used one request of this key's 3/min
    statuses = []
    for _ in range(4):
        status, _, _ = await fetch(session, "GET", f"{gateway.url}/echo/x", headers=auth)
        statuses.append(status)
    first_429 = statuses.index(429)
    assert first_429 in (2, 3) and all(s == 429 for s in statuses[first_429:])
    calls = upstream.calls
    status, headers, body = await fetch(session, "GET", f"{gateway.url}/echo/x", headers=auth)
    assert status == 429
    assert upstream.calls == calls, "a limited request must not reach the upstream"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["RateLimit-Reset"] == headers["Retry-After"]
    assert headers["RateLimit-Remaining"] == "0"
    for name in RATE_HEADERS:
        assert name in headers
    error = orjson.loads(body)
    assert error["error"] == "rate_limited"
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("key,reason", [
    (None, "missing API key"),
    ("rg_not-a-real-key", "unknown API key"),
    ("revoked", "API key revoked"),
    ("expired", "API key expired"),
    ("ws2-key", "unknown API key"),  # a key of another workspace
])
async def test_401_without_upstream_call(gateway, session, upstream, key, reason):
    headers = {}
    if key is not None:
        plain = gateway.keys.plain.get(key, key)
        headers = {"X-API-Key": plain}
    calls = upstream.calls
    status, response_headers, body = await fetch(session, "GET", f"{gateway.url}/echo/x",
                                                 headers=headers)
    assert status == 401
    assert orjson.loads(body)["message"].startswith(reason)
    assert upstream.calls == calls


async def test_unknown_route_is_404_json(gateway, session):
    status, headers, body = await fetch(session, "GET", f"{gateway.url}/nowhere",
                                        headers=gateway.keys.auth("free"))
    assert status == 404
    assert orjson.loads(body)["error"] == "not_found"


async def test_route_boundary_and_prefix_kept(gateway, session):
    auth = gateway.keys.auth("free")
    status, _, _ = await fetch(session, "GET", f"{gateway.url}/echoes", headers=auth)
    assert status == 404  # /echo must not match /echoes
    status, _, body = await fetch(session, "GET", f"{gateway.url}/keep/a/b", headers=auth)
    assert status == 200
    assert orjson.loads(body)["path"] == "/kept/keep/a/b"  # strip_prefix false + base path


async def test_ten_megabytes_streamed_each_way(gateway, session):
    auth = gateway.keys.auth("free")
    payload = os.urandom(10 * 1024 * 1024)

    async def chunks():
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i:i + 256 * 1024]
            await asyncio.sleep(0)

    status, _, body = await fetch(session, "POST", f"{gateway.url}/echo/upload",
                                  headers=auth, data=chunks())  # chunked upload
    assert status == 200
    seen = orjson.loads(body)
    assert seen["size"] == len(payload)
    assert seen["sha256"] == hashlib.sha256(payload).hexdigest()

    status, _, body = await fetch(session, "PUT", f"{gateway.url}/echo/upload",
                                  headers=auth, data=payload)  # content-length upload
    assert status == 200 and orjson.loads(body)["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_ten_megabytes_download(gateway, session, upstream):
    # The echo API strips /echo, so /echo/bytes reaches the upstream's /bytes.
    n = 10 * 1024 * 1024
    status, headers, body = await fetch(session, "GET", f"{gateway.url}/echo/bytes?n={n}",
                                        headers=gateway.keys.auth("free"))
    assert status == 200
    assert len(body) == n
    assert hashlib.sha256(body).hexdigest() == expected_bytes(n)


async def test_body_over_the_limit_is_413(gateway, session, upstream):
    auth = gateway.keys.auth("free")
    calls = upstream.calls
    status, headers, body = await fetch(session, "POST", f"{gateway.url}/small/x",
                                        headers=auth, data=b"x" * 2048)
    assert status == 413
    assert orjson.loads(body)["error"] == "body_too_large"
    assert upstream.calls == calls

    async def chunks():
        for _ in range(4):
            yield b"y" * 1000

    status, _, body = await fetch(session, "POST", f"{gateway.url}/small/x", headers=auth,
                                  data=chunks())
    assert status == 413
    status, _, _ = await fetch(session, "POST", f"{gateway.url}/small/x", headers=auth,
                               data=b"z" * 1000)
    assert status == 200


async def test_upstream_down_is_502_and_slow_is_504(gateway, session):
    auth = gateway.keys.auth("free")
    status, _, body = await fetch(session, "GET", f"{gateway.url}/dead/x", headers=auth)
    assert status == 502
    assert orjson.loads(body)["error"] == "upstream_unavailable"
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, body = await fetch(session, "GET", f"{gateway.url}/slowapi/slow?s=3",
                                  headers=auth)
    assert status == 504
    assert orjson.loads(body)["error"] == "upstream_timeout"
    assert loop.time() - started < 2.5


async def test_upstream_status_and_multiple_set_cookie_pass_through(gateway, session):
    auth = gateway.keys.auth("free")
    status, headers, _ = await fetch(session, "GET", f"{gateway.url}/echo/cookies", headers=auth)
    assert status == 200
    assert sorted(headers.getall("Set-Cookie")) == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    status, _, _ = await fetch(session, "GET", f"{gateway.url}/echo/status/503", headers=auth)
    assert status == 503


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536 * 4), 5)
    writer.close()
    return data


async def test_hop_by_hop_dropped_forwarded_headers_added_encoding_kept(gateway):
    key = gateway.keys.plain["free"]
    request = (
        "GET /echo/a%2Fb/%7Euser?q=a%20b&q=c HTTP/1.1\r\n"
        "Host: api.example.test\r\n"
        f"X-API-Key: {key}\r\n"
        "Connection: keep-alive, X-Secret-Hop\r\n"
        "X-Secret-Hop: drop me\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "Proxy-Authorization: Basic Zm9v\r\n"
        "X-Forwarded-For: 203.0.113.9\r\n"
        "X-Custom: kept\r\n"
        "Connection: close\r\n"
        "\r\n").encode()
    response = await raw_request(gateway.port, request)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = orjson.loads(body)
    sent = seen["headers"]
    for hop in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "x-api-key"):
        assert hop not in sent, hop
    assert sent["x-custom"] == "kept"
    assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "api.example.test"
    assert len(sent["x-request-id"]) >= 16
    assert seen["raw_path"] == "/a%2Fb/%7Euser?q=a%20b&q=c"


async def test_http_errors_are_json_and_bad_requests_get_400(gateway):
    response = await raw_request(gateway.port, b"NOT A REQUEST\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")
    assert b'"error":"bad_request"' in response
    response = await raw_request(
        gateway.port, b"GET /echo/%2e%2e/secret HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")


async def test_keep_alive_connection_serves_many_requests(gateway):
    key = gateway.keys.plain["free"]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    one = f"GET /echo/k HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
    writer.write(one * 3)  # pipelined
    await writer.drain()
    seen = b""
    while seen.count(b"HTTP/1.1 200") < 3:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed early"
        seen += data
    writer.close()


async def test_http10_clients_get_no_chunked_answer_and_keep_alive_said_out_loud(gateway):
    key = gateway.keys.plain["free"]
    # HTTP/1.0 without keep-alive: a chunked upstream answer is passed on close-delimited.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET /echo/bytes?n=5000 HTTP/1.0\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"
                 .encode())
    response = await asyncio.wait_for(reader.read(), 5)  # to the end: the proxy closes
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower() and len(body) == 5000

    # HTTP/1.0 with Connection: keep-alive: the answer says so, and the connection serves
    # the next request.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    for _ in range(2):
        writer.write(f"GET /echo/k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
                     f"X-API-Key: {key}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().lower().split("\r\n")
        assert lines[0].startswith("http/1.1 200") and "connection: keep-alive" in lines
        length = int(next(line.split(":")[1] for line in lines
                          if line.startswith("content-length:")))
        assert orjson.loads(await reader.readexactly(length))["path"] == "/k"
    writer.close()


async def test_policy_with_two_limits_consumes_nothing_when_one_rejects(gateway, session):
    """5/s and 20/min: the 6th call within a second is rejected by 5/s and must not
    count toward 20/min, so 20 calls fit in the minute, not fewer."""
    auth = gateway.keys.auth("two-limits")
    loop = asyncio.get_running_loop()
    admitted = 0
    rejected_by_second = 0
    minute_remaining = []
    while admitted < 20 and loop.time():
        results = await asyncio.gather(*[
            fetch(session, "GET", f"{gateway.url}/echo/t", headers=auth) for _ in range(8)])
        for status, headers, _ in results:
            if status == 200:
                admitted += 1
                minute_remaining.append(int(headers["RateLimit-Remaining"]))
            else:
                assert status == 429
                rejected_by_second += 1
        if admitted < 20:
            await asyncio.sleep(1.05)
    assert admitted == 20, "rejections by 5/s must not use up 20/min"
    assert rejected_by_second > 0
    status, headers, _ = await fetch(session, "GET", f"{gateway.url}/echo/t", headers=auth)
    assert status == 429
    assert headers["RateLimit-Limit"] == "20"  # now the minute limit is the one saying no
    assert int(headers["Retry-After"]) > 1


async def test_shadow_mode_reports_but_never_rejects(gateway, session, upstream):
    auth = gateway.keys.auth("shadow")
    statuses = []
    for _ in range(3):
        status, headers, _ = await fetch(session, "GET", f"{gateway.url}/echo/s", headers=auth)
        statuses.append((status, headers.get("RateLimit-Remaining")))
    assert [s for s, _ in statuses] == [200, 200, 200]
    assert statuses[-1][1] == "0"


async def test_health_and_readiness(gateway, session):
    status, _, body = await fetch(session, "GET", f"{gateway.url}/healthz")
    assert status == 200
    status, _, body = await fetch(session, "GET", f"{gateway.url}/readyz")
    assert status == 200
    detail = orjson.loads(body)
    assert detail["redis"] == "up" and detail["ready"] is True
    status, _, body = await fetch(session, "GET",
                                  f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    text = body.decode()
    assert 'rateguard_requests_total{api="echo",status_class="2xx"}' in text
    allowed = [line for line in text.splitlines()
               if line.startswith('rateguard_limiter_decisions_total{decision="allowed"}')]
    assert allowed and float(allowed[0].split()[-1]) > 0
    assert "rateguard_redis_up 1.0" in text


async def test_close_delimited_upstream_response_arrives_whole(proxies, session):
    """An HTTP/1.1 upstream that ends its body by closing the connection."""
    from rateguard.embedded.servers import free_port
    from tests.integration.conftest import Keys

    body = b"no length, ended by close " * 2000

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
        for i in range(0, len(body), 8192):
            writer.write(body[i:i + 8192])
            await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    keys = Keys()
    proxy = proxies({"workspaces": [{"id": "cd", "apis": [
        {"id": "cd", "prefix": "/", "upstream": f"http://127.0.0.1:{port}"}],
        "keys": [keys.entry("k")]}]})
    try:
        for _ in range(2):
            status, headers, received = await fetch(session, "GET", f"{proxy.url}/x",
                                                    headers=keys.auth("k"))
            assert status == 200
            assert received == body
    finally:
        server.close()


async def test_ip_scoped_limits_behind_a_trusted_proxy(proxies, upstream, session):
    """Behind an ingress (TRUSTED_PROXIES), `ip` limits count the real client from
    X-Forwarded-For; an untrusted caller cannot pick its address that way."""
    from tests.integration.conftest import Keys, unique

    keys = Keys()
    config = {"workspaces": [{"id": unique("xff"), "policies": [
        {"id": "per-ip", "limits": ["2/min"], "scope": "ip", "algorithm": "sliding_log"}],
        "apis": [{"id": "a", "prefix": "/", "upstream": upstream.url, "policy": "per-ip"}],
        "keys": [keys.entry("k")]}]}
    behind = proxies(config, TRUSTED_PROXIES="127.0.0.1/32")

    async def call(proxy, client):
        status, _, body = await fetch(session, "GET", f"{proxy.url}/x", headers={
            **keys.auth("k"), "X-Forwarded-For": client, "X-Forwarded-Proto": "https"})
        return status, body

    assert [(await call(behind, "198.51.100.1"))[0] for _ in range(3)] == [200, 200, 429]
    status, body = await call(behind, "198.51.100.2")  # another client: its own budget
    assert status == 200
    seen = orjson.loads(body)["headers"]
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-for"] == "198.51.100.2, 127.0.0.1"

    exposed = proxies(config)  # no trusted proxies: X-Forwarded-For is not believed
    statuses = [(await call(exposed, f"198.51.100.{i}"))[0] for i in range(10, 13)]
    assert statuses == [200, 200, 429]
