"""The fallback limiter's arithmetic, on a clock the test controls."""

from rateguard.limiter.memory_store import MemoryStore
from rateguard.limiter.policy import Policy, parse_limit


def make(algorithm, *limits):
    return Policy("p", "ws", tuple(parse_limit(x) for x in limits), algorithm=algorithm)


def test_sliding_log_is_exact_over_any_interval():
    store = MemoryStore()
    p = make("sliding_log", "3/s")
    assert [store.check_now(p, "k", t).allowed for t in (0, 100, 200, 300)] == [
        True, True, True, False]
    d = store.check_now(p, "k", 400)
    assert not d.allowed and d.retry_after_ms == 600  # the entry at t=0 expires at 1000
    assert store.check_now(p, "k", 1000.5).allowed


def test_sliding_window_weights_the_previous_window():
    store = MemoryStore()
    p = make("sliding_window", "10/s")
    for t in range(10):
        assert store.check_now(p, "k", 500 + t).allowed
    assert not store.check_now(p, "k", 600).allowed
    # at t=1500 the previous window (10 requests) weighs 50%: room for 5 more
    admitted = sum(store.check_now(p, "k", 1500).allowed for _ in range(10))
    assert admitted == 5
    d = store.check_now(p, "k", 1500)
    assert not d.allowed and d.retry_after_ms > 0


def test_rejection_consumes_nothing():
    store = MemoryStore()
    p = make("sliding_log", "2/s", "5/min")
    results = [store.check_now(p, "k", t).allowed for t in (0, 1, 2, 3)]
    assert results == [True, True, False, False]
    later = [store.check_now(p, "k", 1500 + t).allowed for t in range(4)]
    assert later == [True, True, False, False]
    d = store.check_now(p, "k", 3000)
    assert d.allowed and d.remaining == 0  # 5th of 5/min: the two rejections did not count


def test_memory_is_bounded():
    store = MemoryStore(max_keys=100)
    p = make("sliding_window", "1/s")
    for i in range(1000):
        store.check_now(p, f"k{i}", 0)
    assert len(store._counters) == 100
