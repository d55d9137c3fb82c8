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
