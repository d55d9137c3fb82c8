import pytest

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Limit, Policy, decision_from_reply, parse_limit


@pytest.mark.parametrize("text,limit", [
    ("100/s", Limit(100, 1000)), ("5000/h", Limit(5000, 3_600_000)),
    ("10/5m", Limit(10, 300_000)), ("20/minute", Limit(20, 60_000)),
    ("3 / 250ms", Limit(3, 250)), ("1/d", Limit(1, 86_400_000)),
])
def test_parse_limit(text, limit):
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["", "100", "0/s", "10/fortnight", "-1/s", "a/s"])
def test_parse_limit_rejects(text):
    with pytest.raises(ConfigError):
        parse_limit(text)


def test_policy_header_and_keys():
    p = Policy("p1", "ws", (parse_limit("100/s"), parse_limit("5000/h")))
    assert p.header == "100;w=1, 5000;w=3600"
    assert p.redis_keys("key-1") == ["rg:{ws}:rl:p1:sw:key:key-1:1s",
                                     "rg:{ws}:rl:p1:sw:key:key-1:3600s"]
    assert p.script_args == ("sw", 1, 100, 1000, 5000, 3_600_000)


@pytest.mark.parametrize("field,value", [
    ("scope", "user"), ("mode", "maybe"), ("algorithm", "token_bucket"), ("failure_mode", "x")])
def test_policy_validates_its_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        Policy("p", "ws", (parse_limit("1/s"),), **{field: value})


def test_policy_refuses_two_limits_on_one_window():
    with pytest.raises(ConfigError, match="share a window"):
        Policy("p", "ws", (parse_limit("1/s"), parse_limit("5/s")))


def test_decision_from_reply():
    p = Policy("p", "ws", (parse_limit("10/s"), parse_limit("100/min")))
    d = decision_from_reply(p, [0, 2, 0, 30_500, 1_200])
    assert not d.allowed and d.limit == parse_limit("100/min")
    assert d.reset_seconds == 2 and d.retry_after_seconds == 2  # a refusal: both agree
