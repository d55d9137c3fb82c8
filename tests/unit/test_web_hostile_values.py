"""What no field can hold is refused naming the field, before any handler or database
sees it (issue 21). Pure: the JSON body check and the validators."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from rateguard.db import validate
from rateguard.db.errors import ControlError, Invalid
from rateguard.web.api import registry


class _Request:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self) -> bytes:
        return self.raw


class _Operation:
    request_required = True


def read(raw: bytes):
    ctx = registry.Ctx(_Request(raw), None)
    asyncio.run(registry._read_body(ctx, _Operation))
    return ctx.body


@pytest.mark.parametrize("raw,field,words", [
    (b'{"timeout_seconds": NaN}', "timeout_seconds", "finite"),
    (b'{"threshold": Infinity}', "threshold", "finite"),
    (b'{"a": [1, -Infinity]}', "a[1]", "finite"),
    (b'{"a": {"b": 1e999}}', "a.b", "finite"),
    (b'{"password": "x\\ud800"}', "password", "surrogate"),
    (b'{"channel_ids": ["ok", "\\udfff"]}', "channel_ids[1]", "surrogate"),
    (b'{"channel_ids": ["\\u0000"]}', "channel_ids[0]", "NUL"),
    (b'{"upstream_headers": {"X-A": "a\\u0000"}}', "upstream_headers.X-A", "NUL"),
    (b'{"\\ud800": 1}', "body", "surrogate"),
    (b'[NaN]', "body[0]", "finite"),
])
def test_the_body_check_names_the_field(raw, field, words):
    with pytest.raises(Invalid) as caught:
        read(raw)
    assert caught.value.field == field and words in caught.value.message


def test_ordinary_bodies_pass_unchanged():
    assert read('{"name": "café ✓", "n": 1.5, "l": [1, null, true]}'.encode()) == {
        "name": "café ✓", "n": 1.5, "l": [1, None, True]}
    with pytest.raises(ControlError) as caught:
        read(b"[" * 100000)
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"])
def test_a_timestamp_that_overflows_in_utc_is_invalid(value):
    with pytest.raises(Invalid) as caught:
        validate.timestamp({"expires_at": value}, "expires_at")
    assert caught.value.field == "expires_at" and "out of range" in caught.value.message


def test_timestamps_come_back_in_utc():
    moment = validate.timestamp({"t": "2030-01-01T00:00:00-05:00"}, "t")
    assert moment == datetime(2030, 1, 1, 5, tzinfo=timezone.utc)
    assert moment.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, True, 10**400])
def test_timeouts_are_positive_finite_and_bounded(value):
    with pytest.raises(Invalid) as caught:
        validate.api({"name": "a", "prefix": "/a", "upstream_url": "http://u.example",
                      "timeout_seconds": value})
    assert caught.value.field == "timeout_seconds"


@pytest.mark.parametrize("prefix", ["/%2e%2e", "/a/%2E%2E/b", "/a/%2e", "/a/%252e%252e",
                                    "/a/..;x", "/a/."])
def test_prefixes_the_proxy_would_refuse_are_invalid(prefix):
    with pytest.raises(Invalid) as caught:
        validate.api({"name": "a", "prefix": prefix, "upstream_url": "http://u.example"})
    assert caught.value.field == "prefix"


@pytest.mark.parametrize("prefix", ["/a%2Fb", "/v1.2", "/a/.well-known", "/%41"])
def test_prefixes_with_dots_or_escapes_that_can_match_are_fine(prefix):
    assert validate.api({"name": "a", "prefix": prefix,
                         "upstream_url": "http://u.example"})["prefix"] == prefix
