"""The pure request-head checks (rateguard/proxy/request_head.py) and the forwarded
head (headers.upstream_request_head), without sockets."""

from __future__ import annotations

import pytest

from rateguard.proxy import headers as h
from rateguard.proxy import request_head as rh


@pytest.mark.parametrize("value,ok", [
    (b"api.example.com", True), (b"API.example.com:8443", True), (b"127.0.0.1:3001", True),
    (b"[::1]", True), (b"[2001:db8::1]:80", True), (b"", True), (b"xn--bcher-kva.example", True),
    (b"bad/host", False), (b"a b.example", False), (b"x.example@evil", False),
    (b"x.example\\evil", False), (b"x.example:80:80", False), (b"[::1", False),
    (b"x.example:8o", False), (b"x\x00y", False), (b'x"y', False),
])
def test_rfc9110_7_2_host_syntax(value, ok):
    assert rh.valid_host(value) is ok


@pytest.mark.parametrize("value,ok", [
    (b"3f2a9c1e-7d4b-4e8a-9b1c-0a2b3c4d5e6f", True), (b"01HZX3", True), (b"abc+/=", True),
    (b"", False), (b"x" * 129, False), (b"a b", False), (b'a"b', False), (b"a\tb", False),
    (b"caf\xc3\xa9", False),
])
def test_request_id_shape(value, ok):
    assert rh.valid_request_id(value) is ok


@pytest.mark.parametrize("path,overlong", [
    ("/a/%c0%ae%c0%ae/b", True), ("/a/%C0%AF", True), ("/a/%e0%80%ae", True),
    ("/a/%f0%80%80%ae", True), ("/a/%25c0%25ae", True), ("/a/%2525c1%25259c", True),
    ("/a/caf%c3%a9", False), ("/a/%e9t%e9", False), ("/a/%e0%a4%85", False), ("/a/b", False),
])
def test_rfc3629_overlong_utf8(path, overlong):
    assert rh.overlong_utf8(path) is overlong


@pytest.mark.parametrize("version,expected", [
    ("1.1", None), ("1.0", None), ("0.9", 400), ("2.0", 505), ("3.0", 505),
])
def test_rfc9112_2_3_versions(version, expected):
    refusal = rh.version_refusal(version)
    assert (refusal[0] if refusal else None) == expected


def test_rfc9110_5_6_2_method_tokens():
    assert rh.valid_method(b"PURGE") and rh.valid_method(b"X-CUSTOM")
    assert not rh.valid_method(b"GET /") and not rh.valid_method(b"")


def test_rfc9110_6_6_1_date_is_formatted_once_per_second():
    now = [1_700_000_000.2]
    date = rh.DateLine(clock=lambda: now[0])
    first = date.line
    assert first == b"date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
    assert date.line_via == first + b"via: 1.1 rateguard\r\n"
    now[0] += 0.5
    assert date.refresh() is first  # same second: the same bytes object, no formatting
    now[0] += 1
    assert date.refresh() == b"date: Tue, 14 Nov 2023 22:13:21 GMT\r\n"


def _head(headers, *, trusted=False, original_host=b"gw.test", client_ip=b"10.0.0.9"):
    drop = frozenset() if trusted else frozenset({b"forwarded"})
    raw = h.upstream_request_head(
        b"GET", b"/x", headers, host=b"up", original_host=original_host, request_id=b"rid",
        framing=b"", drop=drop, hop=h.forwarding_hop(client_ip, b"http"))
    fields: dict[bytes, list[bytes]] = {}
    for line in raw.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b": ")
            fields.setdefault(name, []).append(value)
    return fields


def test_rfc9110_5_3_x_forwarded_for_lines_combine_in_order():
    fields = _head([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")])
    assert fields[b"x-forwarded-for"] == [b"1.1.1.1, 2.2.2.2, 10.0.0.9"]
    assert _head([])[b"x-forwarded-for"] == [b"10.0.0.9"]


def test_rfc7239_forwarded_from_untrusted_clients_is_replaced():
    sent = [(b"forwarded", b"for=6.6.6.6;proto=https")]
    assert _head(sent)[b"forwarded"] == [b'for=10.0.0.9;proto=http;host="gw.test"']
    # From a trusted proxy its lines stay, before this hop's (RFC 9110 5.3: one list).
    assert _head(sent, trusted=True)[b"forwarded"] == [
        b"for=6.6.6.6;proto=https", b'for=10.0.0.9;proto=http;host="gw.test"']
    assert _head([], original_host=None)[b"forwarded"] == [b"for=10.0.0.9;proto=http"]
    assert _head([], client_ip=b"::1")[b"forwarded"] == [b'for="[::1]";proto=http;host="gw.test"']


def test_rfc9110_7_6_3_via_is_appended():
    assert _head([(b"via", b"1.0 fred")])[b"via"] == [b"1.0 fred", b"1.1 rateguard"]


def test_client_request_id_is_the_proxys_own_field():
    fields = _head([(b"x-request-id", b"client")])
    assert fields[b"x-request-id"] == [b"rid"]
