"""Alert rules and their state machine: pure functions, no I/O.

A rule watches one metric of a workspace (or of one API) over a sliding window::

    error_rate      share of responses with a 5xx status (0..1)
    limited_ratio   share of requests the limiter refused (decision 'limited', 0..1)
    p95_latency     95th percentile of the gateway's latency, milliseconds
    p99_latency     99th percentile, milliseconds
    request_count   requests in the window

and compares it with a threshold (``above``: value > threshold, ``below``: value <
threshold). A rule breaches when the comparison holds; a window without requests has no
error rate, limited ratio or latency, so those rules do not breach on an idle API
(``request_count below`` does: zero requests is a value).

States and transitions (``for_seconds`` is how long a breach must last before firing)::

    ok / resolved --breach--> pending            (for_seconds > 0)
    ok / resolved --breach--> firing    notify   (for_seconds == 0)
    pending --breach for >= for_seconds--> firing    notify
    pending --no breach--> ok
    firing --no breach--> resolved   notify
    firing --breach--> firing

Only the transitions into ``firing`` and ``resolved`` send notifications.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

METRICS = ("error_rate", "p95_latency", "p99_latency", "limited_ratio", "request_count")
COMPARATORS = {"above": ">", "below": "<"}
SYMBOLS = {">": "above", "<": "below", ">=": "above", "<=": "below"}
STATES = ("ok", "pending", "firing", "resolved")
NOTIFY_STATES = ("firing", "resolved")
RATIO_METRICS = ("error_rate", "limited_ratio")

MAX_WINDOW_SECONDS = 7 * 86400
MAX_FOR_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What the evaluator reads from ClickHouse for one rule's window."""

    requests: int = 0
    errors_5xx: int = 0
    limited: int = 0
    p95_ms: float | None = None
    p99_ms: float | None = None


def metric_value(metric: str, agg: Aggregate) -> float | None:
    """The metric over the window, or None when there is no data to judge by."""
    if metric == "request_count":
        return float(agg.requests)
    if agg.requests <= 0:
        return None
    if metric == "error_rate":
        return agg.errors_5xx / agg.requests
    if metric == "limited_ratio":
        return agg.limited / agg.requests
    if metric == "p95_latency":
        return agg.p95_ms
    if metric == "p99_latency":
        return agg.p99_ms
    raise ValueError(f"unknown metric {metric!r}")


def breaches(comparison: str, value: float | None, threshold: float) -> bool:
    if value is None:
        return False
    if comparison == ">":
        return value > threshold
    if comparison == ">=":
        return value >= threshold
    if comparison == "<":
        return value < threshold
    if comparison == "<=":
        return value <= threshold
    raise ValueError(f"unknown comparison {comparison!r}")


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one evaluation of one rule."""

    state: str
    pending_since: datetime | None
    transition: bool      # the state changed
    notify: bool          # the change is one people hear about (firing, resolved)
    previous: str


def step(state: str, pending_since: datetime | None, breach: bool, for_seconds: float,
         now: datetime) -> Step:
    """Advance a rule's state by one evaluation."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    if breach:
        if state == "firing":
            return Step("firing", None, False, False, state)
        if state == "pending":
            since = pending_since or now
            if (now - since).total_seconds() >= for_seconds:
                return Step("firing", None, True, True, state)
            return Step("pending", since, False, False, state)
        # ok or resolved
        if for_seconds <= 0:
            return Step("firing", None, True, True, state)
        return Step("pending", now, True, False, state)
    if state == "firing":
        return Step("resolved", None, True, True, state)
    if state == "pending":
        return Step("ok", None, True, False, state)
    return Step(state, None, False, False, state)


def describe(metric: str, value: float | None) -> str:
    """A value as people read it: 12.5% for ratios, 840 ms for latency."""
    if value is None:
        return "no data"
    if metric in RATIO_METRICS:
        return f"{value * 100:.1f}%"
    if metric.endswith("_latency"):
        return f"{value:.0f} ms"
    return f"{value:.0f}"


def describe_threshold(metric: str, threshold: float) -> str:
    return describe(metric, threshold)
