"""The scenarios of the load harness. Every one runs the same load directly against the
upstream and through the proxy (and through the baselines asked for)."""

from __future__ import annotations

from dataclasses import dataclass, replace

HUGE_LIMIT = "1000000000/s"  # nothing is ever rejected, yet every request runs the script


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    connections: int = 32
    size: int = 1024           # response body bytes
    policy: bool = True        # a sliding-window policy in Valkey on the API
    events: bool = True        # events to Kafka (the proxy's --no-events when False)
    keys: int = 1              # distinct API keys rotated over the requests
    rate: float = 0.0          # open-loop total rate (Python generator); 0 = closed loop
    phases: int = 1            # memory samples: the proxy's load runs in this many parts

    def with_(self, **changes) -> "Scenario":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def features(self) -> str:
        parts = ["key auth"]
        if self.policy:
            parts.append(f"sliding window {HUGE_LIMIT} in Valkey")
        if self.events:
            parts.append("events to Kafka")
        return " + ".join(parts)


SCENARIOS = {s.name: s for s in (
    Scenario("default", "key auth + sliding-window limit in Valkey + events to Kafka; "
             "32 connections, 1 KB responses"),
    Scenario("auth-only", "key auth only: an API with no policy, --no-events",
             policy=False, events=False),
    Scenario("limit-only", "key auth + sliding-window limit, --no-events", events=False),
    Scenario("events-only", "key auth + events to Kafka, no policy", policy=False),
    Scenario("c1", "the default features, one connection (added latency)", connections=1),
    Scenario("c64", "the default features, 64 connections", connections=64),
    Scenario("c64-r1000", "the default features, 64 connections, open loop at 1,000 "
             "requests/s (Python generator; latency counted from when each request was due)",
             connections=64, rate=1000.0),
    Scenario("body-100k", "the default features, 100 KB responses", size=100 * 1024),
    Scenario("keys-10k", "the default features, 10,000 distinct keys rotating; the proxy's "
             "RSS is sampled after each of several phases (growth over time)",
             keys=10_000, phases=6),
)}

ORDER = list(SCENARIOS)
