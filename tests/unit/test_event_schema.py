import orjson
import pytest

from rateguard.events.schema import FIELDS, Event, InvalidEvent, decode, encode


def sample(**over):
    values = dict(id="r1", ts=1700000000000, workspace_id="ws", api_id="a", key_id="k",
                  method="GET", host="h", path="/p", status=200, latency_ms=1.5,
                  upstream_ms=1.0, bytes_in=0, bytes_out=10, client_ip="127.0.0.1",
                  user_agent="ua", decision="allowed", policy_id="p", instance="i")
    values.update(over)
    return Event(**values)


def test_round_trip_in_field_order():
    event = sample()
    row = decode(encode(event))
    assert row == tuple(getattr(event, name) for name in FIELDS)
    assert FIELDS[:3] == ("id", "ts", "workspace_id")


@pytest.mark.parametrize("raw", [
    b"not json", b"[1,2]", orjson.dumps({"id": "x"}),
    encode(sample(decision="maybe")), encode(sample(status="200")),
])
def test_malformed_events_are_refused(raw):
    with pytest.raises(InvalidEvent):
        decode(raw)


def test_records_carry_json_arrays_within_the_size_cap():
    from rateguard.events.schema import decode_record, encode_records

    events = [sample(id=f"r{i}") for i in range(300)]
    records = encode_records(events, max_bytes=4096)
    assert len(records) > 1
    assert all(len(value) <= 4096 + 600 for value, _ in records)
    assert all(isinstance(orjson.loads(value), list) for value, _ in records)
    rows = [row for value, _ in records for row in decode_record(value)[0]]
    assert [row[0] for row in rows] == [f"r{i}" for i in range(300)]  # order kept
    assert [sum(count for _, _, count in carried) for _, carried in records] == \
        [len(decode_record(value)[0]) for value, _ in records]  # each knows its events


def test_a_part_over_the_cap_is_split_event_by_event():
    from rateguard.events.schema import decode_record, encode_records

    events = [sample(id=f"r{i}", user_agent="u" * 500) for i in range(64)]
    records = encode_records(events, max_bytes=2048)
    assert all(len(value) <= 2048 + 1100 for value, _ in records)
    rows = [row for value, _ in records for row in decode_record(value)[0]]
    assert [row[0] for row in rows] == [f"r{i}" for i in range(64)]


def test_ndjson_records_of_earlier_proxies_still_decode():
    from rateguard.events.schema import decode_record

    rows, errors = decode_record(encode(sample(id="a")) + b"\n" + encode(sample(id="b")))
    assert [row[0] for row in rows] == ["a", "b"] and errors == []


def test_a_malformed_line_spoils_only_itself():
    from rateguard.events.schema import decode_record

    rows, errors = decode_record(encode(sample(id="a")) + b"\n{oops\n" + encode(sample(id="b")))
    assert [row[0] for row in rows] == ["a", "b"]
    assert len(errors) == 1


def test_a_malformed_event_in_an_array_spoils_only_itself():
    from rateguard.events.schema import decode_record

    raw = b"[" + encode(sample(id="a")) + b',{"id":"x"},' + encode(sample(id="b")) + b"]"
    rows, errors = decode_record(raw)
    assert [row[0] for row in rows] == ["a", "b"]
    assert len(errors) == 1
    assert decode_record(b"[{oops")[0] == [] and len(decode_record(b"[{oops")[1]) == 1


def test_an_event_from_before_close_code_reads_as_a_plain_request():
    older = orjson.loads(encode(sample()))
    del older["close_code"]
    row = decode(orjson.dumps(older))
    assert row[FIELDS.index("close_code")] == 0
    websocket = decode(encode(sample(status=101, close_code=4000)))
    assert websocket[FIELDS.index("close_code")] == 4000
    with pytest.raises(InvalidEvent, match="close_code"):
        decode(encode(sample(close_code="4000")))
