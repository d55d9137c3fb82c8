"""The event: one per request that reached the proxy. This is the contract between
the proxy (producer) and analytics (consumer); change it here and in
analytics/sql/ together.

Encoded as JSON with orjson; the Kafka message key is the workspace id, so one
workspace's events stay in order on one partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

DECISIONS = ("allowed", "limited", "shadow_limited", "unauthorized", "error")


@dataclass(slots=True)
class Event:
    id: str            # request id (also sent upstream as X-Request-Id)
    ts: int            # milliseconds since the epoch, when the request arrived
    workspace_id: str  # "" when no API matched
    api_id: str
    key_id: str
    method: str
    host: str
    path: str          # without the query string
    status: int
    latency_ms: float
    upstream_ms: float
    bytes_in: int
    bytes_out: int
    client_ip: str
    user_agent: str
    decision: str
    policy_id: str
    instance: str


FIELDS = tuple(Event.__dataclass_fields__)

# ClickHouse column types, in FIELDS order (see analytics/sql/001_api_events.sql).
_INT_FIELDS = frozenset({"ts", "status", "bytes_in", "bytes_out"})
_FLOAT_FIELDS = frozenset({"latency_ms", "upstream_ms"})


def encode(event: Event) -> bytes:
    return orjson.dumps(event)


class InvalidEvent(ValueError):
    pass


def decode(raw: bytes) -> tuple:
    """JSON bytes -> a row tuple in FIELDS order; InvalidEvent when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("not an object")
    row = []
    for name in FIELDS:
        value = data.get(name)
        if name in _INT_FIELDS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidEvent(f"{name}: expected an integer")
        elif name in _FLOAT_FIELDS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidEvent(f"{name}: expected a number")
            value = float(value)
        elif not isinstance(value, str):
            raise InvalidEvent(f"{name}: expected a string")
        row.append(value)
    if row[FIELDS.index("decision")] not in DECISIONS:
        raise InvalidEvent("decision: unknown value")
    return tuple(row)
