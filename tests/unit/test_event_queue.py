"""The publisher's in-memory queue and the on-disk spool: events become parts of one
workspace each, keep their order, respect the bound, and survive the spool."""

from __future__ import annotations

import gc

import orjson

from rateguard.events.publisher import EventPublisher
from rateguard.events.schema import PART_EVENTS, Event, decode_record, records_of
from rateguard.events.spool import Spool


def event(i: int, workspace: str = "ws-a") -> Event:
    return Event(f"r{i}", 1_700_000_000_000 + i, workspace, "api", "key", "GET", "h", "/p",
                 200, 1.5, 1.0, 0, 10, "127.0.0.1", "ua", "allowed", "", "test")


def ids_of(parts) -> list[str]:
    return [row[0] for value, _ in records_of(parts) for row in decode_record(value)[0]]


def publisher(**kwargs) -> EventPublisher:
    return EventPublisher(("127.0.0.1:9",), "unused", **kwargs)


def test_events_are_sealed_into_parts_per_workspace_in_order():
    pub = publisher()
    for i in range(150):
        pub.publish(event(i))
    for i in range(1000, 1010):
        pub.publish(event(i, "ws-b"))
    assert pub.queued == 160
    assert [part[2] for part in pub.queue] == [PART_EVENTS, PART_EVENTS]  # sealed at 64
    parts = pub._take(5000)
    assert pub.queued == 0 and not pub.queue
    assert sum(part[2] for part in parts) == 160
    assert ids_of([p for p in parts if p[0] == "ws-a"]) == [f"r{i}" for i in range(150)]
    assert ids_of([p for p in parts if p[0] == "ws-b"]) == [f"r{i}" for i in range(1000, 1010)]


def test_take_stops_near_the_limit_and_keeps_the_rest():
    pub = publisher()
    for i in range(640):
        pub.publish(event(i))
    first = pub._take(200)
    assert sum(p[2] for p in first) == 4 * PART_EVENTS  # whole parts, at least the limit
    rest = pub._take(5000)
    assert ids_of(first + rest) == [f"r{i}" for i in range(640)]


def test_queued_events_are_not_tracked_by_the_garbage_collector():
    pub = publisher()
    for i in range(10 * PART_EVENTS):
        pub.publish(event(i))
    gc.collect()
    assert len(pub.queue) == 10 and not any(gc.is_tracked(part) for part in pub.queue)


def test_past_the_bound_events_are_dropped_and_counted():
    dropped = []
    pub = publisher(max_queue=100, on_dropped=dropped.append)
    for i in range(130):
        pub.publish(event(i))
    assert pub.queued == 100 and pub.dropped == 30 and sum(dropped) == 30


def test_a_failed_batch_goes_back_to_the_head_within_the_bound():
    pub = publisher(max_queue=200)
    for i in range(192):
        pub.publish(event(i))
    failed = pub._take(5000)  # 3 parts of 64, all "failed"
    for i in range(192, 292):
        pub.publish(event(i))  # 100 newer events meanwhile
    pub._requeue(failed)
    # room for 100 of the 192: whole parts only, the oldest first
    assert pub.queued == 164 and pub.dropped == 128
    assert ids_of(pub._take(5000)) == [f"r{i}" for i in range(64)] + \
        [f"r{i}" for i in range(192, 292)]


def test_the_spool_keeps_parts_and_single_events_in_order(tmp_path):
    pub = publisher()
    for i in range(100):
        pub.publish(event(i))
    parts = pub._take(5000)
    spool = Spool(tmp_path, 1024 ** 2).open()
    assert spool.append(event(100)) and spool.append(event(101, "ws-b"))
    assert spool.prepend(parts) == 0  # read before what was appended
    assert len(spool) == 102
    spool.close()

    again = Spool(tmp_path, 1024 ** 2).open()  # a restart counts what is on disk
    assert len(again) == 102
    taken = again.take() + again.take()
    assert len(again) == 0 and again.take() == []
    assert ids_of([p for p in taken if p[0] == "ws-a"]) == [f"r{i}" for i in range(101)]
    assert [p[0] for p in taken if p[0] == "ws-b"] == ["ws-b"]
    again.close()


def test_a_damaged_spool_line_is_skipped_not_fatal(tmp_path):
    pub = publisher()
    for i in range(10):
        pub.publish(event(i))
    spool = Spool(tmp_path, 1024 ** 2).open()
    spool.prepend(pub._take(5000))
    spool.close()
    (segment,) = tmp_path.glob("*.ndjson")
    with open(segment, "ab") as fh:
        fh.write(orjson.dumps(event(10)) + b"\n")
        fh.write(b'5\t"ws-a"\t[{"id":"r11","ts":1')  # cut by a crash
    again = Spool(tmp_path, 1024 ** 2).open()
    taken = again.take()
    assert ids_of(taken) == [f"r{i}" for i in range(11)]
    again.close()


def test_the_spool_cap_gives_up_the_newest_parts(tmp_path):
    pub = publisher()
    for i in range(3 * PART_EVENTS):
        pub.publish(event(i))
    parts = pub._take(5000)
    one = len(b"%d\t%s\t[%s]\n" % (parts[0][2], orjson.dumps(parts[0][0]), parts[0][1]))
    spool = Spool(tmp_path, one + 10).open()
    assert spool.prepend(parts) == 2 * PART_EVENTS
    assert ids_of(spool.take()) == [f"r{i}" for i in range(PART_EVENTS)]
    spool.close()
