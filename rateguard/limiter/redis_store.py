"""The shared limiter: one Lua script call per request, all limits of a policy at once."""

from __future__ import annotations

import hashlib
from importlib import resources

import hiredis

from rateguard.errors import LimitCallFailed, LimiterUnavailable
from rateguard.limiter.policy import Decision, Policy, decision_from_reply
from rateguard.limiter.redis_client import RedisClient, RedisReplyError
from rateguard.limiter.store import server_wide

SCRIPT = resources.files("rateguard.limiter").joinpath("lua/limit.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

# Packed EVALSHA commands kept per policy and scope value: the same request from the
# same key sends the same bytes, so they are built once. Bounded per policy, and in
# the number of policies (old versions of edited policies are dropped with the rest).
MAX_CACHED_COMMANDS = 50_000
MAX_CACHED_POLICIES = 10_000


class RedisStore:
    """Evaluates policies in Redis with ``EVALSHA``; reloads the script on ``NOSCRIPT``
    (after a Redis restart or ``SCRIPT FLUSH``)."""

    sharded = False  # one server: a failure concerns every call

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._commands: dict[str, dict[str, bytes]] = {}

    async def load(self) -> None:
        try:
            sha = await self.client.execute("SCRIPT", "LOAD", SCRIPT)
        except RedisReplyError as exc:
            raise LimiterUnavailable(f"redis refused the limiter script: {exc}") from None
        except OSError as exc:
            raise LimiterUnavailable(f"redis at {self.client.where}: {exc}") from None
        if isinstance(sha, bytes):
            sha = sha.decode()
        assert sha == SCRIPT_SHA, "script digest mismatch"

    def _packed(self, policy: Policy, scope_value: str) -> bytes:
        commands = self._commands.get(policy.fingerprint)
        if commands is None:
            if len(self._commands) >= MAX_CACHED_POLICIES:
                self._commands.clear()
            commands = self._commands[policy.fingerprint] = {}
        elif len(commands) >= MAX_CACHED_COMMANDS:
            commands.clear()
        keys = policy.redis_keys(scope_value)
        packed = commands[scope_value] = hiredis.pack_command(
            ("EVALSHA", SCRIPT_SHA, len(keys), *keys, *policy.script_args))
        return packed

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        commands = self._commands.get(policy.fingerprint)
        packed = commands.get(scope_value) if commands is not None else None
        if packed is None:
            packed = self._packed(policy, scope_value)
        try:
            try:
                reply = await self.client.execute_packed(packed)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                keys = policy.redis_keys(scope_value)
                reply = await self.client.execute(
                    "EVAL", SCRIPT, len(keys), *keys, *policy.script_args)
        except RedisReplyError as exc:
            message = str(exc)
            if server_wide(message):
                raise LimiterUnavailable(f"redis at {self.client.where}: {message}") from None
            raise LimitCallFailed(message) from None
        except OSError as exc:
            raise LimiterUnavailable(f"redis at {self.client.where}: {exc}") from None
        return decision_from_reply(policy, reply)

    async def healthy(self) -> bool:
        try:
            return await self.client.ping()
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.close()
