"""Prometheus metrics of the proxy. Labels are bounded: API id, status class and
decision; never a key, a path or a client (unbounded cardinality).

The per-request metrics (requests, latencies, decisions) are plain counters kept in
Python and turned into Prometheus families only when scraped: prometheus-client's
Counter and Histogram take a lock per update, about 7 us per request in all, which
the hot path cannot afford. Everything runs on the proxy's one event-loop thread,
the scrape included, so no lock is needed. Slow-moving metrics use prometheus-client
directly.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from rateguard.events.schema import DECISIONS

disable_created_metrics()

BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        total = 0
        out = []
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._per_api: dict[str, tuple[dict[str, Count], Histogram, Histogram]] = {}
        self.by_decision = {d: Count() for d in DECISIONS}
        registry.register(self)
        self.events_published = Counter("rateguard_events_published",
                                        "Events delivered to Kafka", registry=registry)
        self.events_dropped = Counter("rateguard_events_dropped",
                                      "Events lost (queue full or undelivered at exit)",
                                      registry=registry)
        self.queue_depth = Gauge("rateguard_event_queue_depth", "Events waiting for Kafka",
                                 registry=registry)
        self.spool_depth = Gauge("rateguard_event_spool_depth",
                                 "Events waiting in the on-disk spool (EVENT_SPOOL_DIR)",
                                 registry=registry)
        self.redis_up = Gauge("rateguard_redis_up", "1 when the limiter reaches Redis",
                              registry=registry)
        # Labelled by workspace (bounded by the number of workspaces, not by clients):
        # an error answer to one limiter call is that workspace's problem alone.
        self.limiter_errors = Counter(
            "rateguard_limiter_errors", "Limiter calls Redis answered with an error (script "
            "error, WRONGTYPE, OOM); each request used its policy's failure mode",
            ["workspace"], registry=registry)
        self.websockets_open = Gauge("rateguard_websockets_open",
                                     "WebSocket connections being relayed", registry=registry)
        self.inflight = Gauge("rateguard_inflight_requests", "Requests being served",
                              registry=registry)
        self.redis_up.set(1)

    def for_api(self, api_id: str) -> tuple[dict[str, Count], Histogram, Histogram]:
        """Per-API accumulators: (requests by status class, latency, upstream latency)."""
        children = self._per_api.get(api_id)
        if children is None:
            children = ({c: Count() for c in STATUS_CLASSES}, Histogram(), Histogram())
            self._per_api[api_id] = children
        return children

    # prometheus-client collector protocol
    def describe(self):
        return []

    def collect(self):
        requests = CounterMetricFamily("rateguard_requests", "Requests by API and status class",
                                       labels=("api", "status_class"))
        latency = HistogramMetricFamily("rateguard_request_duration_seconds",
                                        "Time from request head to last response byte",
                                        labels=("api",))
        upstream = HistogramMetricFamily("rateguard_upstream_duration_seconds",
                                         "Time the upstream took to answer", labels=("api",))
        for api_id, (by_class, total, upstream_hist) in list(self._per_api.items()):
            for status_class, count in by_class.items():
                requests.add_metric((api_id, status_class), count.value)
            latency.add_metric((api_id,), total.buckets(), total.sum)
            upstream.add_metric((api_id,), upstream_hist.buckets(), upstream_hist.sum)
        decisions = CounterMetricFamily("rateguard_limiter_decisions", "Decisions by outcome",
                                        labels=("decision",))
        for decision, count in self.by_decision.items():
            decisions.add_metric((decision,), count.value)
        yield requests
        yield latency
        yield upstream
        yield decisions
