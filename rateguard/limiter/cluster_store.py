"""The shared limiter on Redis Cluster, through redis-py's asyncio ``RedisCluster``.

The same Lua script runs on the shard that owns a workspace: all keys of one policy
carry the ``{workspace_id}`` hash tag, so they share a slot. redis-py follows MOVED/ASK
redirections and topology changes.

One dead shard must not slow down or fail the others: a shard that failed a call is
skipped for ``probe_interval`` seconds (its requests go straight to the policy's
failure mode), then one call probes it again. The other shards are unaffected.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError, NoPermissionError, NoScriptError, ReadOnlyError, RedisClusterException,
    RedisError, ResponseError, TryAgainError)

from rateguard.errors import LimitCallFailed, LimiterUnavailable
from rateguard.limiter.policy import Decision, Policy, decision_from_reply
from rateguard.limiter.redis_store import SCRIPT, SCRIPT_SHA
from rateguard.limiter.store import server_wide


# redis-py's classes for the replies that concern the shard (it strips their codes).
_SHARD_WIDE = (ClusterDownError, ReadOnlyError, TryAgainError, NoPermissionError)


def cluster_url(url: str) -> str:
    """``redis+cluster://h:p`` -> ``redis://h:p`` (what redis-py expects)."""
    parts = urlsplit(url)
    scheme = "redis" if parts.scheme in ("redis+cluster", "redis") else parts.scheme
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class ClusterStore:
    sharded = True  # a failure concerns one shard, not the whole limiter

    def __init__(self, url: str, *, timeout: float = 0.25, probe_interval: float = 1.0) -> None:
        self.url = url
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port}"  # for messages: never the password
        self.probe_interval = probe_interval
        self.cluster = RedisCluster.from_url(
            cluster_url(url), socket_timeout=timeout, socket_connect_timeout=timeout,
            cluster_error_retry_attempts=1, require_full_coverage=False,
            decode_responses=False)
        self._down: dict[str, float] = {}

    async def load(self) -> None:
        try:
            await self.cluster.initialize()
            await self.cluster.script_load(SCRIPT)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise LimiterUnavailable(f"redis cluster at {self.where}: {exc}") from None

    def shard_of(self, key: str) -> str:
        return self.cluster.get_node_from_key(key).name

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        keys = policy.redis_keys(scope_value)
        try:
            shard = self.shard_of(keys[0])
        except (RedisClusterException, RedisError) as exc:
            raise LimiterUnavailable(f"redis cluster: no shard for {keys[0]}: {exc}") from None
        until = self._down.get(shard)
        if until is not None:
            if time.monotonic() < until:
                raise LimiterUnavailable(f"redis cluster shard {shard} is down")
            self._down.pop(shard, None)  # half-open: this call probes it
        args = (len(keys), *keys, *policy.script_args)
        try:
            try:
                reply = await self.cluster.evalsha(SCRIPT_SHA, *args)
            except NoScriptError:  # e.g. a node that joined or restarted since load()
                reply = await self.cluster.eval(SCRIPT, *args)
        except ResponseError as exc:
            # The shard answered. An error about this call (a script error, WRONGTYPE,
            # OOM) fails this request alone; one about the shard (READONLY during a
            # failover, CLUSTERDOWN, LOADING) is the shard being unavailable.
            if not (isinstance(exc, _SHARD_WIDE) or server_wide(str(exc))):
                raise LimitCallFailed(str(exc)) from None
            self._down[shard] = time.monotonic() + self.probe_interval
            raise LimiterUnavailable(f"redis cluster shard {shard}: {exc}") from None
        except Exception as exc:
            # Not only RedisError: under a node failure redis-py can also raise from a
            # connection torn down mid-write (AttributeError on a closed transport).
            # Whatever the client raises here means "this shard did not answer".
            self._down[shard] = time.monotonic() + self.probe_interval
            raise LimiterUnavailable(f"redis cluster shard {shard}: {exc}") from None
        return decision_from_reply(policy, reply)

    async def healthy(self) -> bool:
        try:
            return bool(await self.cluster.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.cluster.aclose()
