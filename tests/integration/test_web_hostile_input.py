"""The management API answers hostile input with a 4xx naming the field, never a 500:
lone surrogates and NUL in JSON strings and query parameters, NaN and Infinity, dates
whose time-zone conversion overflows, prefixes that could never match, and request heads
the HTTP parser refuses (issue 21)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import pytest_asyncio


pytestmark = pytest.mark.integration

SURROGATE = "\ud800"


@pytest_asyncio.fixture(scope="module")
async def owner(plane):
    return await plane.signup("hostile")


@pytest_asyncio.fixture(scope="module")
async def refs(plane, owner):
    """A policy, an API and a channel to point at."""
    base = f"/workspaces/{owner.workspace_id}"
    _, policy = await plane.call("POST", base + "/policies", owner,
                                 json={"name": "p", "limits": ["5/s"]})
    _, api = await plane.call("POST", base + "/apis", owner, json={
        "name": "a", "prefix": "/hostile", "upstream_url": "http://127.0.0.1:1"})
    _, channel = await plane.call("POST", base + "/alerts/channels", owner, json={
        "name": "c", "kind": "webhook", "url": "https://hooks.example.com/x"})
    return {"policy": policy["id"], "api": api["id"], "channel": channel["id"], "base": base}


def raw_json(text: str) -> dict:
    """A body sent byte for byte (json= would refuse a lone surrogate client-side)."""
    return {"data": text.encode(), "headers": {"Content-Type": "application/json"}}


RULE = '"name": "r", "metric": "request_count", "comparator": "above", "threshold": 1, ' \
       '"window_seconds": 60'


@pytest.mark.parametrize("path,body,field", [
    ("/auth/login", '{"email": "\\ud800@example.com", "password": "long enough"}', "email"),
    ("/auth/login", '{"email": "a@example.com", "password": "x\\udfff"}', "password"),
    ("/auth/signup", '{"email": "s@example.com", "password": "pass\\ud800word"}', "password"),
    ("/auth/signup", '{"email": "s@example.com", "password": "long enough", '
                     '"invitation": "\\ud800"}', "invitation"),
    ("/auth/refresh", '{"refresh_token": "rgr_\\udfff"}', "refresh_token"),
])
async def test_lone_surrogates_in_public_operations_are_422(plane, path, body, field):
    status, error = await plane.call("POST", path, **raw_json(body))
    assert (status, error["error"], error["field"]) == (422, "invalid", field), error
    assert "surrogate" in error["message"]


@pytest.mark.parametrize("tail,body,field", [
    ("/keys", '{"name": "k", "policy_id": "\\ud800"}', "policy_id"),
    ("/apis", '{"name": "a", "prefix": "/s", "upstream_url": "http://127.0.0.1:1", '
              '"policy_id": "\\ud800"}', "policy_id"),
    ("/alerts/channels", '{"name": "c", "kind": "webhook", "url": "https://x.example/\\ud800"}',
     "url"),
    ("/alerts/channels", '{"name": "c", "kind": "webhook", "url": "https://x.example/", '
                         '"secret": "0123456789abcdef\\ud800"}', "secret"),
    ("/alerts/channels", '{"name": "c", "kind": "smtp", "host": "mail.example", '
                         '"username": "u", "password": "\\udfff", "from": "a@example.com", '
                         '"to": ["b@example.com"]}', "password"),
    ("/alerts/rules", '{' + RULE + ', "api_id": "\\ud800"}', "api_id"),
    ("/alerts/rules", '{' + RULE + ', "channel_ids": ["\\ud800"]}', "channel_ids[0]"),
    ("/alerts/rules", '{' + RULE + ', "channel_ids": ["\\u0000"]}', "channel_ids[0]"),
])
async def test_lone_surrogates_and_nul_in_workspace_writes_are_422(plane, owner, refs, tail,
                                                                   body, field):
    status, error = await plane.call("POST", refs["base"] + tail, owner, **raw_json(body))
    assert (status, error["field"]) == (422, field), error


async def test_surrogates_in_an_api_patch_and_an_invitation_accept(plane, owner, refs):
    status, error = await plane.call("PATCH", f"{refs['base']}/apis/{refs['api']}", owner,
                                     **raw_json('{"policy_id": "\\ud800"}'))
    assert (status, error["field"]) == (422, "policy_id")
    status, error = await plane.call("POST", "/invitations/accept", owner,
                                     **raw_json('{"token": "rgi_\\ud800"}'))
    assert (status, error["field"]) == (422, "token")


@pytest.mark.parametrize("query", [{"rule_id": "\x00"}, {"rule_id": "a\x01"}])
async def test_nul_in_a_query_parameter_is_422(plane, owner, refs, query):
    status, error = await plane.call("GET", refs["base"] + "/alerts/history", owner,
                                     params=query)
    assert (status, error["field"]) == (422, "rule_id"), error


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-05:00",
                                        "9999-12-31T23:59:59.999999-00:01"])
async def test_an_expiry_past_the_last_instant_is_422(plane, owner, refs, expires_at):
    status, error = await plane.call("POST", refs["base"] + "/keys", owner,
                                     json={"name": "k", "expires_at": expires_at})
    assert (status, error["field"]) == (422, "expires_at"), error
    # The same instant in UTC is fine.
    status, key = await plane.call("POST", refs["base"] + "/keys", owner,
                                   json={"name": "k", "expires_at": "9999-12-31T23:59:59Z"})
    assert status == 201 and key["expires_at"].startswith("9999-12-31T23:59:59")


@pytest.mark.parametrize("query,field", [
    ({"to": "9999-12-31T23:00:00-05:00"}, "to"),
    ({"from": "0001-01-01T00:00:00+01:00"}, "from"),
    ({"to": "0001-01-01T00:00:00Z"}, "to"),
    ({"from": "9999-12-31T23:59:59Z", "to": "9999-12-31T23:59:59-14:00"}, "to"),
])
async def test_analytics_ranges_that_overflow_are_422(plane, owner, refs, query, field):
    status, error = await plane.call("GET", refs["base"] + "/analytics/decisions", owner,
                                     params=query)
    assert (status, error["field"]) == (422, field), error


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_refused_naming_the_field(plane, owner, refs, value):
    body = ('{"name": "a", "prefix": "/nan", "upstream_url": "http://127.0.0.1:1", '
            '"timeout_seconds": %s}' % value)
    status, error = await plane.call("POST", refs["base"] + "/apis", owner, **raw_json(body))
    assert (status, error["field"]) == (422, "timeout_seconds"), error
    assert "finite" in error["message"]
    status, error = await plane.call("PATCH", f"{refs['base']}/apis/{refs['api']}", owner,
                                     **raw_json('{"timeout_seconds": %s}' % value))
    assert (status, error["field"]) == (422, "timeout_seconds"), error
    status, error = await plane.call("POST", refs["base"] + "/alerts/rules", owner,
                                     **raw_json('{%s}' % RULE.replace('"threshold": 1',
                                                                     f'"threshold": {value}')))
    assert (status, error["field"]) == (422, "threshold"), error
    status, api = await plane.call("GET", f"{refs['base']}/apis/{refs['api']}", owner)
    assert api["timeout_seconds"] is None  # nothing was stored


@pytest.mark.parametrize("prefix", ["/%2e%2e", "/a/%2E%2E/b", "/a/%2e", "/a/%252e%252e/b",
                                    "/a/..;x"])
async def test_prefixes_that_can_never_match_are_422(plane, owner, refs, prefix):
    status, error = await plane.call("POST", refs["base"] + "/apis", owner, json={
        "name": "a", "prefix": prefix, "upstream_url": "http://127.0.0.1:1"})
    assert (status, error["field"]) == (422, "prefix"), error


async def _raw_request(plane, head: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("header", [
    b"Authorization: Bearer " + b"x" * 10240,
    b"X-Thing: a\x00b",
    b"Authorization: Bearer a\x00b",
])
async def test_request_heads_the_parser_refuses_get_json_and_one_log_line(plane, caplog,
                                                                          header):
    caplog.set_level(logging.DEBUG)
    status, headers, body = await _raw_request(
        plane, b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    import json
    error = json.loads(body)
    assert error["error"] == "bad_request" and error["message"].startswith("request head")
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "malformed request" in records[0].getMessage()
