"""Prometheus metrics of the proxy. Labels are bounded: API id, status class and
decision; never a key, a path or a client (unbounded cardinality)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
from rateguard.events.schema import DECISIONS

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("rateguard_requests", "Requests by API and status class",
                                ("api", "status_class"), registry=registry)
        self.latency = Histogram("rateguard_request_duration_seconds",
                                 "Time from request head to last response byte",
                                 ("api",), buckets=_BUCKETS, registry=registry)
        self.upstream_latency = Histogram("rateguard_upstream_duration_seconds",
                                          "Time the upstream took to answer",
                                          ("api",), buckets=_BUCKETS, registry=registry)
        self.decisions = Counter("rateguard_limiter_decisions", "Decisions by outcome",
                                 ("decision",), registry=registry)
        self.events_published = Counter("rateguard_events_published",
                                        "Events delivered to Kafka", registry=registry)
        self.events_dropped = Counter("rateguard_events_dropped",
                                      "Events lost (queue full or undelivered at exit)",
                                      registry=registry)
        self.queue_depth = Gauge("rateguard_event_queue_depth", "Events waiting for Kafka",
                                 registry=registry)
        self.redis_up = Gauge("rateguard_redis_up", "1 when the limiter reaches Redis",
                              registry=registry)
        self.inflight = Gauge("rateguard_inflight_requests", "Requests being served",
                              registry=registry)
        self.redis_up.set(1)
        self.by_decision = {d: self.decisions.labels(d) for d in DECISIONS}
        self._per_api: dict[str, tuple] = {}

    def for_api(self, api_id: str) -> tuple:
        """Per-API children, resolved once: (requests by class dict, latency, upstream)."""
        children = self._per_api.get(api_id)
        if children is None:
            by_class = {c: self.requests.labels(api_id, c) for c in STATUS_CLASSES}
            children = (by_class, self.latency.labels(api_id), self.upstream_latency.labels(api_id))
            self._per_api[api_id] = children
        return children
