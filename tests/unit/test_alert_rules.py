"""The alert state machine, metrics and rule validation: pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rateguard.alerts import notify, store
from rateguard.alerts.rules import Aggregate, breaches, describe, metric_value, step
from rateguard.db.errors import Invalid

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_metrics_from_an_aggregate():
    agg = Aggregate(requests=200, errors_5xx=50, limited=20, p95_ms=120.0, p99_ms=480.0)
    assert metric_value("error_rate", agg) == 0.25
    assert metric_value("limited_ratio", agg) == 0.1
    assert metric_value("p95_latency", agg) == 120.0
    assert metric_value("p99_latency", agg) == 480.0
    assert metric_value("request_count", agg) == 200.0


def test_no_traffic_is_no_data_except_for_request_count():
    empty = Aggregate()
    for metric in ("error_rate", "limited_ratio", "p95_latency", "p99_latency"):
        assert metric_value(metric, empty) is None
        assert not breaches(">", None, 0.0) and not breaches("<", None, 1.0)
    assert metric_value("request_count", empty) == 0.0
    assert breaches("<", 0.0, 1.0)


@pytest.mark.parametrize("comparison,value,threshold,expected", [
    (">", 0.5, 0.1, True), (">", 0.1, 0.1, False), (">=", 0.1, 0.1, True),
    ("<", 5, 10, True), ("<", 10, 10, False), ("<=", 10, 10, True),
])
def test_comparisons(comparison, value, threshold, expected):
    assert breaches(comparison, value, threshold) is expected


def test_without_a_for_duration_a_breach_fires_at_once_and_resolves():
    s = step("ok", None, True, 0, at(0))
    assert (s.state, s.transition, s.notify) == ("firing", True, True)
    s = step("firing", None, True, 0, at(1))
    assert (s.state, s.transition, s.notify) == ("firing", False, False)
    s = step("firing", None, False, 0, at(2))
    assert (s.state, s.transition, s.notify, s.previous) == ("resolved", True, True, "firing")
    s = step("resolved", None, False, 0, at(3))
    assert (s.state, s.transition) == ("resolved", False)
    s = step("resolved", None, True, 0, at(4))
    assert (s.state, s.notify) == ("firing", True)


def test_a_for_duration_goes_through_pending_and_fires_once_it_has_lasted():
    s = step("ok", None, True, 30, at(0))
    assert (s.state, s.transition, s.notify, s.pending_since) == ("pending", True, False, at(0))
    s = step("pending", s.pending_since, True, 30, at(29))
    assert (s.state, s.transition, s.pending_since) == ("pending", False, at(0))
    s = step("pending", s.pending_since, True, 30, at(30))
    assert (s.state, s.transition, s.notify, s.pending_since) == ("firing", True, True, None)


def test_a_pending_rule_that_recovers_goes_back_to_ok_quietly():
    s = step("pending", at(0), False, 30, at(10))
    assert (s.state, s.transition, s.notify, s.pending_since) == ("ok", True, False, None)
    assert step("ok", None, False, 30, at(11)).transition is False


def test_unknown_state_is_refused():
    with pytest.raises(ValueError):
        step("exploded", None, True, 0, at(0))


def test_values_read_as_people_read_them():
    assert describe("error_rate", 0.125) == "12.5%"
    assert describe("p95_latency", 840.2) == "840 ms"
    assert describe("request_count", 12.0) == "12"
    assert describe("limited_ratio", None) == "no data"


def test_signature_is_hmac_sha256_of_the_body():
    import hashlib
    import hmac

    body = b'{"event":"alert.firing"}'
    expected = hmac.new(b"s3cret-s3cret-s3cret", body, hashlib.sha256).hexdigest()
    assert notify.sign("s3cret-s3cret-s3cret", body) == "sha256=" + expected
    assert notify.verify("s3cret-s3cret-s3cret", body, "sha256=" + expected)
    assert not notify.verify("s3cret-s3cret-s3cret", body + b" ", "sha256=" + expected)


def test_rule_validation_names_the_bad_field():
    good = {"name": "errors", "metric": "error_rate", "comparator": "above",
            "threshold": 0.1, "window_seconds": 60}
    clean = store.rule(good)
    assert clean["comparison"] == ">" and clean["for_seconds"] == 0 and clean["enabled"]
    for bad, field in [({"metric": "cpu"}, "metric"), ({"comparator": ">"}, "comparator"),
                       ({"threshold": 5}, "threshold"), ({"threshold": "x"}, "threshold"),
                       ({"window_seconds": 0}, "window_seconds"),
                       ({"for_seconds": -1}, "for_seconds"), ({"extra": 1}, "extra"),
                       ({"channel_ids": "ch_1"}, "channel_ids")]:
        with pytest.raises(Invalid) as caught:
            store.rule({**good, **bad})
        assert caught.value.field == field


def test_channel_validation_keeps_secrets_out_of_the_config():
    clean, secret, generated = store.channel(
        {"name": "hooks", "kind": "webhook", "url": "https://hooks.example.com/x"})
    assert generated and secret.startswith("whsec_") and secret not in str(clean)
    clean, secret, generated = store.channel(
        {"name": "slack", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"})
    assert secret.endswith("/T/B/X") and "T/B/X" not in str(clean["config"])
    clean, secret, _ = store.channel(
        {"name": "mail", "kind": "smtp", "host": "smtp.example.com", "username": "u",
         "password": "pw", "from": "alerts@example.com", "to": ["ops@example.com"]})
    assert clean["config"]["port"] == 587 and clean["config"]["starttls"] is True
    assert secret == "pw" and "pw" not in str(clean["config"].values())
    for bad, field in [({"kind": "pager"}, "kind"), ({"url": "ftp://x"}, "url"),
                       ({"secret": "short"}, "secret"), ({"host": "h"}, "host")]:
        with pytest.raises(Invalid) as caught:
            store.channel({"name": "n", "kind": "webhook", "url": "https://h.example/x",
                           **bad})
        assert caught.value.field == field
