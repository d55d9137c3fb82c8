"""What the limiter needs of a store, and the one place stores are built.

A store evaluates a policy for one scope value and answers a :class:`Decision`. It
translates its backend's failures into the limiter's two error types:

- ``LimiterUnavailable``: the store could not answer (connection refused, reset or timed
  out, a shard down, a server that is loading or read-only). It concerns every call on
  that connection or shard, so the limiter counts it toward a circuit.
- ``LimitCallFailed``: the store answered this one call with an error (a script error,
  ``WRONGTYPE``, out of memory for one key). Only that request is concerned.
"""

from __future__ import annotations

from typing import Protocol

from rateguard.limiter.policy import Decision, Policy

# Error replies that describe the server, not the call: every call would get them.
SERVER_WIDE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN",
                       "TRYAGAIN", "NOAUTH", "WRONGPASS", "NOPERM")


def server_wide(message: str) -> bool:
    """Whether a Redis error reply concerns every call (``BUSY``, ``LOADING`` ...)."""
    return message.lstrip().upper().startswith(SERVER_WIDE_REPLIES)


class Store(Protocol):
    """A shared store of counters: RedisStore (one server) or ClusterStore (shards)."""

    #: True when a failure concerns one shard only; the store then skips that shard
    #: for a while by itself and the limiter keeps its single circuit closed.
    sharded: bool

    async def load(self) -> None:
        """Connect and load the script; raises LimiterUnavailable."""

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        """One atomic evaluation; raises LimiterUnavailable or LimitCallFailed."""

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


def connect(url: str, *, cluster: bool = False, timeout: float = 0.25) -> Store:
    """The store for a ``REDIS_URL``: a Redis Cluster when ``cluster``, else one server
    (``redis://``, ``rediss://``, ``unix://``). ``timeout``: seconds a call may wait for
    its answer before it counts as unavailable. Nothing connects until ``load()``."""
    if cluster:
        from rateguard.limiter.cluster_store import ClusterStore
        return ClusterStore(url, timeout=timeout)
    from rateguard.limiter.redis_client import RedisClient
    from rateguard.limiter.redis_store import RedisStore
    return RedisStore(RedisClient(url, timeout=timeout))
