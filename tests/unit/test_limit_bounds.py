"""Every way a limit enters RateGuard refuses what the limiter cannot hold, with a
message that names the field and the range: the management API and dashboard
(``validate.policy``), the YAML file, the login-throttle settings, and ``Policy``
itself (PostgreSQL rows are built through it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rateguard.db import validate
from rateguard.db.errors import Invalid
from rateguard.errors import ConfigError, SettingsError
from rateguard.limiter.policy import (
    MAX_COUNT, MAX_LOG_COUNT, MAX_WINDOW_MS, MIN_WINDOW_MS, Limit, Policy, parse_limit)
from rateguard.settings import Settings
from rateguard.snapshot.yaml_source import parse_config

ABSURD = {
    "1/99999999999999999999d": "window must be between",
    "99999999999999999999999/s": "count must be between",
    "1000000001/s": "count must be between",
    "1/50ms": "window must be between",
    "1/367d": "window must be between",
    "0/s": "count must be between",
    "1" * 70 + "/s": "expected <count>/<window>",
    "\u0661\u0660/s": "expected <count>/<window>",  # Arabic-Indic digits: int() takes them
    "10/s\x00": "expected <count>/<window>",
    "-5/s": "expected <count>/<window>",
    "1.5/s": "expected <count>/<window>",
}


@pytest.mark.parametrize("text,message", ABSURD.items())
def test_parse_limit_refuses_absurd_limits_naming_the_range(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_limit(text)


def test_the_bounds_themselves_are_accepted():
    assert parse_limit(f"{MAX_COUNT}/366d") == Limit(MAX_COUNT, MAX_WINDOW_MS)
    assert parse_limit("1/100ms") == Limit(1, MIN_WINDOW_MS)
    Policy("p", "ws", (Limit(MAX_LOG_COUNT, MAX_WINDOW_MS),), algorithm="sliding_log")


def test_sliding_log_counts_are_bounded_by_memory():
    with pytest.raises(ConfigError, match="sliding_log keeps one entry per admitted"):
        Policy("p", "ws", (parse_limit("10000000/d"),), algorithm="sliding_log")
    Policy("p", "ws", (parse_limit("10000000/d"),), algorithm="sliding_window")


def test_policy_refuses_limits_built_around_the_parser():
    with pytest.raises(ConfigError, match="out of range"):
        Policy("p", "ws", (Limit(10**20, 1000),))
    with pytest.raises(ConfigError, match="out of range"):
        Policy("p", "ws", (Limit(5, 1),))
    with pytest.raises(ConfigError, match="at most 10 limits"):
        Policy("p", "ws", tuple(Limit(1, 1000 * (i + 1)) for i in range(11)))


@pytest.mark.parametrize("body,field,message", [
    ({"name": "x", "limits": ["1/99999999999999999999d"]}, "limits[0]", "366 days"),
    ({"name": "x", "limits": ["1/s", "99999999999999999999999/s"]}, "limits[1]", "1,000,000,000"),
    ({"name": "x", "limits": ["200000/min"], "algorithm": "sliding_log"}, "limits",
     "at most 100,000"),
])
def test_management_api_answers_422_naming_the_field(body, field, message):
    with pytest.raises(Invalid) as caught:
        validate.policy(body)
    assert caught.value.status == 422
    assert str(caught.value).startswith(f"{field}: ") and message in str(caught.value)


def test_yaml_config_names_the_bad_limit():
    config = {"workspaces": [{"id": "ws", "policies": [
        {"id": "p", "limits": ["99999999999999999999999/s"]}]}]}
    with pytest.raises(ConfigError, match=r"policies\[0\].*count must be between 1 and"):
        parse_config(config)


def test_login_throttle_settings_name_the_variable():
    with pytest.raises(SettingsError, match="LOGIN_RATE_LIMIT_IP"):
        Settings.from_env({"LOGIN_RATE_LIMIT_IP": "1/99999999999999999999d"})


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_parse_limit_fails_only_with_a_config_error(text):
    try:
        limit = parse_limit(text)
    except ConfigError:
        return
    assert 1 <= limit.count <= MAX_COUNT and MIN_WINDOW_MS <= limit.window_ms <= MAX_WINDOW_MS


@pytest.mark.parametrize("limits,algorithm,expected,served_by", [
    (["99999999999999999999999/s"], "sliding_window", ["1000000000/1s"], "sliding_window"),
    (["1/99999999999999999999d"], "sliding_window", ["1/31622400s"], "sliding_window"),
    (["10000000/d", "5/50ms"], "sliding_log", ["5/100ms", "10000000/86400s"],
     "sliding_window"),
    (["\u0661\u0660/s"], "sliding_log", ["10/1s"], "sliding_log"),  # once accepted
])
def test_a_stored_policy_from_before_the_bounds_is_clamped_not_fatal(
        limits, algorithm, expected, served_by):
    """A PostgreSQL row saved before the bounds must not stop every proxy's snapshot."""
    from rateguard.limiter.policy import stored_policy

    policy, problem = stored_policy("p", "ws", limits, algorithm=algorithm)
    assert problem and [str(limit) for limit in policy.limits] == expected
    assert policy.algorithm == served_by


def test_a_valid_stored_policy_is_served_as_stored():
    from rateguard.limiter.policy import stored_policy

    policy, problem = stored_policy("p", "ws", ["100/s", "5000/h"], algorithm="sliding_log")
    assert problem == "" and policy.algorithm == "sliding_log" and len(policy.limits) == 2


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1, 0, True])
def test_yaml_refuses_non_finite_timeouts(value):
    config = {"workspaces": [{"id": "ws", "apis": [
        {"id": "a", "prefix": "/a", "upstream": "http://127.0.0.1:1", "timeout_seconds": value}]}]}
    with pytest.raises(ConfigError, match="timeout_seconds"):
        parse_config(config)
