"""The proxy's pure hot-path work for one request: key extraction and lookup, routing,
header building, and the whole admission (route + key + limiter call) on real Valkey.
The snapshot has 50 APIs and 10,000 keys (conftest.py)."""

from __future__ import annotations

import pytest

from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.redis_client import RedisClient
from rateguard.limiter.redis_store import RedisStore
from rateguard.proxy import headers as h
from rateguard.proxy.gateway import Gateway, extract_key
from rateguard.limiter import Limiter
from rateguard.proxy.routing import host_of, match, safe_path
from rateguard.snapshot.keys import hash_key

# What wrk and curl send, as the HTTP layer hands them over (lowercase names).
REQUEST_HEADERS = [
    (b"host", b"api.acme.test:3001"),
    (b"user-agent", b"curl/8.5.0"),
    (b"accept", b"*/*"),
    (b"authorization", b"Bearer rg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"content-type", b"application/json"),
    (b"connection", b"keep-alive"),
]
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"1024"),
    (b"date", b"Thu, 26 Nov 2026 10:00:00 GMT"),
    (b"server", b"upstream"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
]


@pytest.fixture(scope="module")
def gateway(loop, redis_url, snapshot):
    client = RedisClient(redis_url, timeout=5.0)
    limiter = Limiter(RedisStore(client), MemoryStore())
    loop.run_until_complete(limiter.start())
    yield Gateway(snapshot, limiter, instance="bench")
    loop.run_until_complete(limiter.close())


@pytest.fixture(scope="module")
def api(snapshot):
    return next(iter(snapshot.routes[""].values()))


# -- keys -----------------------------------------------------------------------------------

def test_extract_key_bearer(benchmark, plain_keys):
    header = b"Bearer " + plain_keys[0].encode()
    key, in_authorization = benchmark(extract_key, header, None)
    assert in_authorization and key == plain_keys[0].encode()


def test_hash_key(benchmark, plain_keys):
    """SHA-256 of a presented key (the stored form)."""
    benchmark(hash_key, plain_keys[0].encode())


def test_key_lookup_hash_and_dict(benchmark, snapshot, plain_keys):
    """hash_key + the snapshot's dict, 10,000 keys."""
    table = snapshot.keys_by_hash
    presented = plain_keys[1234].encode()
    key = benchmark(lambda: table.get(hash_key(presented)))
    assert key is not None and key.id == "k1234"


def test_gateway_authenticate(benchmark, snapshot, gateway, plain_keys):
    """Gateway.authenticate: lookup, workspace, revoked, expiry checks."""
    api = snapshot.apis[0]
    presented = plain_keys[42].encode()
    key = benchmark(gateway.authenticate, api, presented)
    assert not isinstance(key, str)


# -- routing --------------------------------------------------------------------------------

@pytest.mark.parametrize("host, path", [
    (b"api.acme.test:3001", "/svc3/v1/orders/42"),   # host table, prefix near the top
    (b"unknown.test", "/svc48/v1/items"),           # catch-all table
    (b"unknown.test", "/no/such/prefix"),           # falls through to "/"
], ids=["host-match", "catch-all", "root-fallback"])
def test_route_match(benchmark, snapshot, host, path):
    routes = snapshot.routes
    result = benchmark(lambda: match(routes, host_of(host), path))
    assert result is not None


def test_safe_path(benchmark):
    assert benchmark(safe_path, "/svc3/v1/orders/42/items?x=1")


# -- headers --------------------------------------------------------------------------------

def test_upstream_request_head(benchmark, snapshot):
    api = snapshot.apis[0]
    drop = h.connection_tokens(REQUEST_HEADERS) | {b"authorization"}

    def build():
        return h.upstream_request_head(
            b"GET", b"/base/orders/42?x=1", REQUEST_HEADERS, host=api.upstream.host_header,
            client_ip=b"127.0.0.1", proto=b"http", original_host=b"api.acme.test:3001",
            request_id=b"a1b2c3d4e5f60000000001", framing=b"", drop=drop,
            extra=api.upstream_headers)

    head = benchmark(build)
    assert head.startswith(b"GET /base/orders/42?x=1 HTTP/1.1\r\n")


def test_client_response_head(benchmark, loop, gateway, policy):
    decision = loop.run_until_complete(gateway.limiter.check(policy, "headers"))
    lines = [b"x-request-id: a1b2c3d4e5f60000000001\r\n",
             *h.ratelimit_lines(decision, policy.header.encode())]

    def build():
        return h.client_response_head(200, b"OK", RESPONSE_HEADERS, extra=lines,
                                      framing=b"content-length: 1024\r\n", keep_alive=True,
                                      http10=False)

    head = benchmark(build)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_ratelimit_lines(benchmark, loop, gateway, policy):
    decision = loop.run_until_complete(gateway.limiter.check(policy, "lines"))
    header = policy.header.encode()
    benchmark(h.ratelimit_lines, decision, header)


# -- the whole admission --------------------------------------------------------------------

def test_gateway_admit(benchmark, loop, gateway, plain_keys):
    """Route + key + one limiter call on Valkey: the gateway's decision for a request."""
    authorization = b"Bearer " + plain_keys[7].encode()
    admission = benchmark(lambda: loop.run_until_complete(gateway.admit(
        b"api.acme.test", "/svc3/v1/orders/42", authorization, None, "127.0.0.1")))
    assert admission.status == 0, admission.message
