"""No limit the validator accepts makes the Lua script fail or answer nonsense.

Hypothesis builds limit texts from counts and windows around and far beyond the
bounds; whatever ``parse_limit`` and ``Policy`` accept is run through the shipped
script on real Valkey, for both algorithms, admitted and refused.
"""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Policy, decision_from_reply, parse_limit
from rateguard.limiter.redis_store import SCRIPT
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration

UNITS = ["ms", "s", "m", "min", "h", "d", "days", "minute"]
counts = st.one_of(st.integers(0, 20), st.integers(0, 2 * 10**9), st.integers(0, 10**25))
multiples = st.one_of(st.just(""), st.integers(0, 10**6).map(str), st.integers().map(str))


@pytest.fixture(scope="module")
def script(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client.register_script(SCRIPT)
    client.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=counts, multiple=multiples, unit=st.sampled_from(UNITS),
       algorithm=st.sampled_from(["sliding_window", "sliding_log"]),
       calls=st.integers(1, 3))
def test_every_accepted_limit_runs_in_the_script(script, count, multiple, unit, algorithm,
                                                 calls):
    text = f"{count}/{multiple}{unit}"
    try:
        policy = Policy(unique("p"), "fuzz", (parse_limit(text),), algorithm=algorithm)
    except ConfigError:
        event("refused")
        return
    event(f"accepted {algorithm}")
    keys = policy.redis_keys("k")
    limit = policy.limits[0]
    for i in range(calls):
        reply = script(keys=keys, args=list(policy.script_args))
        decision = decision_from_reply(policy, reply)
        assert 0 <= decision.remaining < limit.count
        assert 0 <= decision.reset_ms <= 2 * limit.window_ms
        assert decision.allowed == (i < limit.count)
        if not decision.allowed:
            assert 0 < decision.retry_after_ms <= 2 * limit.window_ms
            assert decision.reset_seconds == decision.retry_after_seconds
