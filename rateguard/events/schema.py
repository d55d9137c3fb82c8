"""The event: one per request that reached the proxy. This is the contract between
the proxy (producer) and analytics (consumer); change it here and in
analytics/sql/ together.

Encoded as JSON with orjson. One Kafka record carries one or more events of one
workspace as newline-delimited JSON (batching cuts the producer's per-record cost,
which dominated publishing); the record key is the workspace id, so one workspace's
events stay in order on one partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

DECISIONS = ("allowed", "limited", "shadow_limited", "unauthorized", "error")


@dataclass
class Event:
    # No __slots__: orjson serializes a dataclass with a __dict__ three times faster.
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


def encode_records(events: list[Event], max_bytes: int = 256 * 1024) -> list[tuple[bytes, list[Event]]]:
    """Events of one workspace -> Kafka record values (NDJSON, each at most about
    ``max_bytes``), each with the events it carries."""
    records = []
    lines: list[bytes] = []
    carried: list[Event] = []
    size = 0
    for event in events:
        line = orjson.dumps(event)
        if lines and size + len(line) > max_bytes:
            records.append((b"\n".join(lines), carried))
            lines, carried, size = [], [], 0
        lines.append(line)
        carried.append(event)
        size += len(line) + 1
    if lines:
        records.append((b"\n".join(lines), carried))
    return records


class InvalidEvent(ValueError):
    pass


def decode_record(raw: bytes) -> tuple[list[tuple], list[str]]:
    """One Kafka record -> (rows, errors): every well-formed event line becomes a row;
    each malformed line is reported, not fatal."""
    rows, errors = [], []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rows.append(decode(line))
        except InvalidEvent as exc:
            errors.append(str(exc))
    return rows, errors


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
