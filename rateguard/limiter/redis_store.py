"""The shared limiter: one Lua script call per request, all limits of a policy at once."""

from __future__ import annotations

import hashlib
from importlib import resources

import hiredis

from rateguard.limiter.policy import Decision, Policy, decision_from_reply
from rateguard.limiter.redis_client import RedisClient, RedisReplyError

SCRIPT = resources.files("rateguard.limiter").joinpath("lua/limit.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

# Packed EVALSHA commands kept per policy and scope value: the same request from the
# same key sends the same bytes, so they are built once. Bounded per policy.
MAX_CACHED_COMMANDS = 50_000


class RedisStore:
    """Evaluates policies in Redis with ``EVALSHA``; reloads the script on ``NOSCRIPT``
    (after a Redis restart or ``SCRIPT FLUSH``)."""

    sharded = False  # one server: a failure concerns every call

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    async def load(self) -> None:
        sha = await self.client.execute("SCRIPT", "LOAD", SCRIPT)
        if isinstance(sha, bytes):
            sha = sha.decode()
        assert sha == SCRIPT_SHA, "script digest mismatch"

    async def check(self, policy: Policy, scope_value: str) -> Decision:
        commands = policy.commands
        packed = commands.get(scope_value)
        if packed is None:
            if len(commands) >= MAX_CACHED_COMMANDS:
                commands.clear()
            keys = policy.redis_keys(scope_value)
            packed = commands[scope_value] = hiredis.pack_command(
                ("EVALSHA", SCRIPT_SHA, len(keys), *keys, *policy.script_args))
        try:
            reply = await self.client.execute_packed(packed)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            keys = policy.redis_keys(scope_value)
            reply = await self.client.execute(
                "EVAL", SCRIPT, len(keys), *keys, *policy.script_args)
        return decision_from_reply(policy, reply)

    async def healthy(self) -> bool:
        try:
            return await self.client.ping()
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.close()
