import pytest

from rateguard.limiter.policy import Decision, parse_limit
from rateguard.proxy import headers as h
from rateguard.proxy.gateway import extract_key
from rateguard.proxy.routing import host_of, match, safe_path
from rateguard.snapshot.model import Api, Snapshot, Upstream


def api(id, prefix, host=None, strip=True, upstream="http://up:8080/base"):
    return Api(id, "ws", prefix, Upstream.parse(upstream), host=host, strip_prefix=strip)


SNAP = Snapshot(apis=(
    api("root", "/"), api("v1", "/v1"), api("v1-users", "/v1/users"),
    api("keep", "/keep", strip=False), api("hosted", "/v1", host="api.example.com"),
))


@pytest.mark.parametrize("host,path,expect", [
    ("other", "/v1/users/7", ("v1-users", "/base/7")),
    ("other", "/v1/usersx", ("v1", "/base/usersx")),
    ("other", "/v1", ("v1", "/base/")),
    ("other", "/v10", ("root", "/base/v10")),
    ("other", "/keep/a", ("keep", "/base/keep/a")),
    ("api.example.com", "/v1/users/7", ("hosted", "/base/users/7")),
    ("api.example.com", "/nothing", ("root", "/base/nothing")),
])
def test_longest_prefix_and_host_first(host, path, expect):
    found, upstream_path = match(SNAP.routes, host, path)
    assert (found.id, upstream_path) == expect


def test_no_route():
    snap = Snapshot(apis=(api("v1", "/v1"),))
    assert match(snap.routes, "x", "/v2") is None


@pytest.mark.parametrize("path,ok", [
    ("/a/b", True), ("/a/..", False), ("/a/../b", False), ("/a/%2e%2e/b", False),
    ("/a/%2E%2e%2Fb", False), ("/a%2F..%2Fb", False), ("/a/.%2e/b", False),
    ("/a\\..\\b", False), ("/a/%252e%252e/b", False), ("/a/%00", False), ("relative", False),
    ("//double", True), ("/a/...", True),
])
def test_safe_path(path, ok):
    assert safe_path(path) is ok


def test_host_of():
    assert host_of(b"API.Example.com:8443") == "api.example.com"
    assert host_of(b"[::1]:80") == "[::1]"
    assert host_of(None) == ""


def test_extract_key():
    assert extract_key(b"Bearer rg_abc", None) == (b"rg_abc", True)
    assert extract_key(b"bearer rg_abc", b"rg_x") == (b"rg_x", False)
    assert extract_key(b"Bearer eyJ.jwt", None) == (None, False)  # not ours: passed on
    assert extract_key(None, None) == (None, False)


def test_upstream_request_head_drops_hop_by_hop_and_adds_forwarded():
    headers = [(b"connection", b"close, x-hop"), (b"x-hop", b"1"), (b"te", b"trailers"),
               (b"x-keep", b"yes"), (b"x-forwarded-for", b"1.2.3.4"), (b"host", b"front")]
    head = h.upstream_request_head(
        b"GET", b"/p?q=1", headers, host=b"up", client_ip=b"9.9.9.9", proto=b"http",
        original_host=b"front", request_id=b"rid", framing=b"",
        drop=h.connection_tokens(headers))
    text = head.decode()
    assert text.startswith("GET /p?q=1 HTTP/1.1\r\nhost: up\r\n")
    assert "x-hop" not in text and "te:" not in text and "connection" not in text
    assert "x-keep: yes" in text
    assert "x-forwarded-for: 1.2.3.4, 9.9.9.9" in text
    assert "x-forwarded-host: front" in text and "x-request-id: rid" in text
    assert text.endswith("\r\n\r\n")


def test_client_response_head_keeps_repeated_headers():
    headers = [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"keep-alive", b"5"),
               (b"transfer-encoding", b"chunked")]
    head = h.client_response_head(200, b"OK", headers, extra=[b"x-request-id: r\r\n"],
                                  framing=b"transfer-encoding: chunked\r\n", keep_alive=True,
                                  http10=False).decode()
    assert head.count("set-cookie") == 2 and "keep-alive" not in head
    assert head.count("transfer-encoding") == 1


def test_ratelimit_lines():
    d = Decision(False, parse_limit("10/min"), 0, 30_000, 1_500)
    lines = b"".join(h.ratelimit_lines(d, b"10;w=60")).decode()
    # a refusal: RateLimit-Reset is when this request would be admitted, as Retry-After
    assert "ratelimit-limit: 10\r\n" in lines and "ratelimit-reset: 2\r\n" in lines
    assert "ratelimit-policy: 10;w=60\r\n" in lines and "retry-after: 2\r\n" in lines
