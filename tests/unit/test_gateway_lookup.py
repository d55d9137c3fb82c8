"""Gateway.authenticate with its per-value caches: a snapshot change (a key revoked
or added) takes effect at once, and only short values are kept."""

import pytest
import yaml

from rateguard.limiter.policy import Decision, parse_limit
from rateguard.proxy.gateway import MAX_CACHED_BYTES, Gateway
from rateguard.snapshot.keys import hash_key, new_key
from rateguard.snapshot.yaml_source import parse_config

CONFIG = """
workspaces:
  - id: demo
    apis:
      - {id: echo, prefix: /echo, upstream: "http://127.0.0.1:9"}
    keys:
%s
"""


def snapshot(*keys: tuple[str, str, bool]):
    lines = "\n".join(f"      - {{id: {kid}, sha256: {hash_key(value)}, revoked: {str(revoked).lower()}}}"
                      for kid, value, revoked in keys) or "      []"
    return parse_config(yaml.safe_load(CONFIG % lines))


def test_a_key_revoked_or_added_by_a_new_snapshot_counts_at_once():
    alice, bob = new_key(), new_key()
    gateway = Gateway(snapshot(("a", alice, False)), limiter=None, instance="t")
    api = gateway.snapshot.apis[0]
    assert gateway.authenticate(api, alice.encode()).id == "a"
    assert gateway.authenticate(api, bob.encode()) == "unknown API key"
    assert gateway.authenticate(api, bob.encode()) == "unknown API key"  # remembered

    gateway.snapshot = snapshot(("a", alice, True), ("b", bob, False))
    api = gateway.snapshot.apis[0]
    assert gateway.authenticate(api, alice.encode()) == "API key revoked"
    assert gateway.authenticate(api, bob.encode()).id == "b"


def test_long_values_are_looked_up_but_not_kept():
    gateway = Gateway(snapshot(), limiter=None, instance="t")
    api = gateway.snapshot.apis[0]
    huge = b"rg_" + b"x" * (MAX_CACHED_BYTES + 1)
    assert gateway.authenticate(api, huge) == "unknown API key"
    assert gateway.host(b"H" * 300 + b":8080") == "h" * 300
    assert gateway.host(b"Api.Example:443") == "api.example"
    assert huge not in gateway._keys and b"H" * 300 + b":8080" not in gateway._hosts


def test_decision_seconds_round_up():
    limit = parse_limit("10/min")
    assert Decision(True, limit, 5, 0, 0).reset_seconds == 0
    assert Decision(True, limit, 5, 1, 0).reset_seconds == 1
    assert Decision(True, limit, 5, 1000, 0).reset_seconds == 1
    assert Decision(True, limit, 5, 1001, 0).reset_seconds == 2
    assert Decision(True, limit, 5, -5, 0).reset_seconds == 0
    assert Decision(False, limit, 0, 0, 0).retry_after_seconds == 1
    assert Decision(False, limit, 0, 0, 2001).retry_after_seconds == 3


@pytest.mark.parametrize("reset_ms,retry_ms", [
    (0, 0), (1, 1), (51_000, 53_001), (30_500, 1_200), (-5, 999), (60_000, 1_000)])
def test_a_refusal_says_the_same_second_in_reset_and_retry_after(reset_ms, retry_ms):
    """One 429 must not say "reset in 51 s" and "retry after 54 s"."""
    d = Decision(False, parse_limit("10/min"), 0, reset_ms, retry_ms)
    assert d.reset_seconds == d.retry_after_seconds == max(1, -(-retry_ms // 1000))
