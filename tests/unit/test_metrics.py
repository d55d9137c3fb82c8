from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rateguard.proxy.metrics import ProxyMetrics


def samples(metrics: ProxyMetrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_per_request_metrics_are_exposed_as_prometheus_families():
    metrics = ProxyMetrics()
    by_class, latency, upstream = metrics.for_api("orders")
    by_class["2xx"].inc()
    by_class["2xx"].inc()
    by_class["5xx"].inc()
    for value in (0.0003, 0.002, 0.2):
        latency.observe(value)
    upstream.observe(0.001)
    metrics.by_decision["limited"].inc()
    got = samples(metrics)
    assert got[("rateguard_requests_total", (("api", "orders"), ("status_class", "2xx")))] == 2
    assert got[("rateguard_requests_total", (("api", "orders"), ("status_class", "5xx")))] == 1
    le = lambda bound: ("rateguard_request_duration_seconds_bucket",
                        (("api", "orders"), ("le", bound)))
    assert got[le("0.0005")] == 1 and got[le("0.0025")] == 2 and got[le("+Inf")] == 3
    assert got[("rateguard_request_duration_seconds_count", (("api", "orders"),))] == 3
    assert abs(got[("rateguard_request_duration_seconds_sum", (("api", "orders"),))]
               - 0.2023) < 1e-9
    assert got[("rateguard_upstream_duration_seconds_bucket",
                (("api", "orders"), ("le", "0.001")))] == 1
    assert got[("rateguard_limiter_decisions_total", (("decision", "limited"),))] == 1
    assert got[("rateguard_redis_up", ())] == 1
