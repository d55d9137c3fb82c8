"""Rate limiting: pure policy logic (policy.py), the Redis store with its Lua script
(redis_store.py, lua/limit.lua) and the per-replica fallback (memory_store.py)."""
