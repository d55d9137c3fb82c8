"""The event: one per request that reached the proxy. This is the contract between
the proxy (producer) and analytics (consumer); change it here and in
analytics/sql/ together.

Encoded as JSON with orjson. One Kafka record carries a JSON array of events of one
workspace (batching cuts the producer's per-record cost, which dominated publishing,
and one orjson call per 64 events costs a tenth of one per event); the record key is
the workspace id, so one workspace's events stay in order on one partition. Readers
also take newline-delimited JSON records, which earlier proxies wrote.
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
    # A WebSocket connection is one event when it ends (status 101, latency = its
    # duration, bytes each way): the close code seen (RFC 6455 7.4; 1005 when the close
    # frame had none, 1001 when the proxy drained it), 0 for any other request and for
    # events from proxies older than this field.
    close_code: int = 0


FIELDS = tuple(Event.__dataclass_fields__)
# Fields added after the first version, with the value an older event stands for.
DEFAULTS = {"close_code": 0}

# ClickHouse column types, in FIELDS order (see analytics/sql/001_api_events.sql).
_INT_FIELDS = frozenset({"ts", "status", "bytes_in", "bytes_out", "close_code"})
_FLOAT_FIELDS = frozenset({"latency_ms", "upstream_ms"})


def encode(event: Event) -> bytes:
    return orjson.dumps(event)


PART_EVENTS = 64  # events encoded by one orjson call (see encode_part)

# A part: events of one workspace already encoded, as the publisher queues them:
# (workspace id, encode_part(events), how many). Plain tuples of str/bytes/int, which
# the garbage collector stops tracking, so queued events cost no collection time.
Part = tuple[str, bytes, int]


def encode_part(events: list[Event]) -> bytes:
    """Events as the inside of a JSON array (``{...},{...}``). One ``orjson.dumps`` of
    a list costs about a tenth of one call per event, and parts join by a comma."""
    return orjson.dumps(events)[1:-1]


def make_part(events: list[Event]) -> Part:
    """Events of one workspace as one part."""
    return (events[0].workspace_id, encode_part(events), len(events))


def events_in(parts: list[Part]) -> int:
    """How many events these parts carry."""
    return sum(part[2] for part in parts)


def parts_of(events: list[Event]) -> list[Part]:
    """Events of one workspace as parts of PART_EVENTS events each."""
    return [make_part(events[start:start + PART_EVENTS])
            for start in range(0, len(events), PART_EVENTS)]


def encode_records(events: list[Event],
                   max_bytes: int = 256 * 1024) -> list[tuple[bytes, list[Part]]]:
    """Events of one workspace -> Kafka record values (see ``records_of``)."""
    return records_of(parts_of(events), max_bytes)


def records_of(parts: list[Part],
               max_bytes: int = 256 * 1024) -> list[tuple[bytes, list[Part]]]:
    """Parts of one workspace joined into Kafka record values (JSON arrays of at most
    about ``max_bytes``), each with the parts it carries; a part over the cap is split
    event by event."""
    records = []
    chunks: list[bytes] = []
    carried: list[Part] = []
    size = 0
    for part in parts:
        body = part[1]
        if len(body) > max_bytes and part[2] > 1:
            records += records_of(split_part(part), max_bytes)
            continue
        if chunks and size + len(body) > max_bytes:
            records.append((b"[" + b",".join(chunks) + b"]", carried))
            chunks, carried, size = [], [], 0
        chunks.append(body)
        carried.append(part)
        size += len(body) + 1
    if chunks:
        records.append((b"[" + b",".join(chunks) + b"]", carried))
    return records


def split_part(part: Part) -> list[Part]:
    """A part as one part per event (for one too large for a record)."""
    workspace_id = part[0]
    return [(workspace_id, orjson.dumps(item), 1)
            for item in orjson.loads(b"[" + part[1] + b"]")]


class InvalidEvent(ValueError):
    pass


def decode_record(raw: bytes) -> tuple[list[tuple], list[str]]:
    """One Kafka record -> (rows, errors): every well-formed event becomes a row; each
    malformed one is reported, not fatal. A record is a JSON array of events, or
    newline-delimited JSON (what proxies before the arrays wrote)."""
    rows, errors = [], []
    if raw[:1] == b"[":
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return [], [f"not JSON: {exc}"]
        for item in items:
            try:
                rows.append(_row(item))
            except InvalidEvent as exc:
                errors.append(str(exc))
        return rows, errors
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
    return _row(data)


def _row(data) -> tuple:
    if not isinstance(data, dict):
        raise InvalidEvent("not an object")
    row = []
    for name in FIELDS:
        value = data.get(name, DEFAULTS.get(name))
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
