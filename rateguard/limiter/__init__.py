"""Rate limiting, usable on its own: pure policy logic (policy.py), the limiter with its
circuit, failure modes and refusal cache (limiter.py), the store interface and factory
(store.py), the Redis stores with their Lua script (redis_store.py, cluster_store.py,
lua/limit.lua) and the per-replica fallback (memory_store.py).

    store = connect("redis://127.0.0.1:6379", timeout=0.25)
    limiter = Limiter(store)
    await limiter.start()
    decision = await limiter.check(policy, "key_123")
"""

from rateguard.limiter.limiter import Limiter
from rateguard.limiter.store import Store, connect

__all__ = ["Limiter", "Store", "connect"]
