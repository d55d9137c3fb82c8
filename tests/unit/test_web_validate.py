"""Validation of what clients send, and the OpenAPI document built from the operation
table (pure; no server)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from aiohttp import web

from rateguard.db import validate
from rateguard.db.errors import Invalid
from rateguard.web.api import registry
from rateguard.web.api.openapi import build


def test_policy_defaults_and_normalised_limits():
    clean = validate.policy({"name": " std ", "limits": ["100 / S", "5000/h"]})
    assert clean == {"name": "std", "limits": ["100 / s", "5000/h"], "scope": "key",
                     "mode": "enforce", "algorithm": "sliding_window", "failure_mode": "open"}


def test_policy_patch_merges_with_the_current_one():
    current = validate.policy({"name": "p", "limits": ["1/s"], "scope": "ip"})
    assert validate.policy({"mode": "shadow"}, current)["scope"] == "ip"
    with pytest.raises(Invalid) as caught:
        validate.policy({"limits": ["1/s", "2/1000ms"]}, current)
    assert caught.value.field == "limits" and "share a window" in caught.value.message


def test_api_host_and_prefix_are_normalised():
    clean = validate.api({"name": "a", "host": "API.Example.COM", "prefix": "/v1/",
                          "upstream_url": "https://up.example:8443/base"})
    assert (clean["host"], clean["prefix"], clean["strip_prefix"]) == (
        "api.example.com", "/v1", True)
    assert "upstream_headers" not in clean  # only when the body sets it


def test_key_expiry_must_be_in_the_future():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert validate.key({"name": "k", "expires_at": "2030-01-02T00:00:00"}, now)[
        "expires_at"] == datetime(2030, 1, 2, tzinfo=timezone.utc)
    with pytest.raises(Invalid, match="expires_at: must be in the future"):
        validate.key({"name": "k", "expires_at": "2029-12-31T00:00:00Z"}, now)


@pytest.mark.parametrize("value", [-1, 30 * 86400 + 1, True, "60", 1.5])
def test_roll_overlap_bounds(value):
    with pytest.raises(Invalid, match="overlap_seconds"):
        validate.roll({"overlap_seconds": value})


def test_roll_defaults_to_an_hour():
    assert validate.roll(None) == 3600 and validate.roll({}) == 3600


def test_openapi_document_covers_every_operation_with_json_errors():
    app = web.Application()
    registry.add_routes(app)
    document = build()
    assert document["openapi"] == "3.1.0"
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(registry.OPERATIONS) + 1
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if operation["security"]:
                assert "401" in operation["responses"], (method, path)
            if "{workspace_id}" in path:
                assert "404" in operation["responses"], (method, path)
            if "requestBody" in operation:
                assert {"400", "422"} <= set(operation["responses"]), (method, path)


def test_printable_text_refuses_controls_format_and_separators_only():
    """Names are printable text: no control, format (zero-width, bidirectional) or
    separator character but the space. A private-use character or one this Python's
    Unicode tables do not know yet (an emoji newer than them) is text."""
    for good in ("Team \U0001fa75", "icon \ue000", "日本語", "a b"):
        assert validate.text({"name": good}, "name") == good
    for bad in ("a\u200bb", "a\u202eb", "a\u00a0b", "a\u2028b", "a\x7fb", "a\u00adb"):
        with pytest.raises(Invalid):
            validate.text({"name": bad}, "name")


def test_the_documents_printable_pattern_is_the_servers_rule():
    """Every character the document's printable pattern admits the server takes, and the
    other way round (surrogates aside: no JSON string can carry a lone one)."""
    import re
    import sys

    from rateguard.web.api import schemas

    pattern = re.compile(schemas.PRINTABLE)
    differ = [code for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF
              and bool(pattern.fullmatch(chr(code))) != validate.printable(chr(code))]
    assert differ == []
    trimmed = re.compile(schemas.TRIMMED)
    assert trimmed.fullmatch("a b") and not trimmed.fullmatch(" a") \
        and not trimmed.fullmatch("a ")


def test_the_documents_limit_host_prefix_and_header_patterns_match_the_server():
    """A few values on each side of the patterns the document states for policies and
    APIs, against the server's own validation."""
    import re

    from rateguard.web.api import schemas

    for limit, ok in (("100/s", True), (" 10 / 5 Minutes ", True), ("5/x", False),
                      ("/s", False), ("5/", False)):
        assert bool(re.search(schemas.LIMIT_SYNTAX, limit)) is ok, limit
    base = {"name": "a", "upstream_url": "http://up.example"}
    for prefix in ("/a", "/a/b", "/%41", "/a/.b", "/a.", "/a/../b", "/a/./b", "/a/.",
                   "/a/.;x", "/a/%2e%2e", "/a//b", "/.", "//"):
        documented = bool(re.search(schemas.PREFIX, prefix))
        if documented:  # what the document admits the server takes
            validate.api({**base, "prefix": prefix})
        else:
            with pytest.raises(Invalid):
                validate.api({**base, "prefix": prefix})
    for name, ok in (("X-Token", True), ("Host", False), ("KEEP-ALIVE", False),
                     ("X-Forwarded-Forx", True), ("a b", False)):
        assert bool(re.search(schemas.HEADER_NAME, name)) is ok, name
