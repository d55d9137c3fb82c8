"""Login throttling with RateGuard's own limiter.

Every sign-in attempt (API or dashboard, they share the login operation) is counted
per client address and per email address, with the same Lua limiter the proxy uses
(sliding log, exact across web replicas when Redis is configured; per replica in memory
otherwise). Past either limit the answer is 429 with Retry-After, before the password
is even checked.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from rateguard.db.errors import ControlError
from rateguard.limiter.policy import Policy, parse_limit

CONTROL_WORKSPACE = "rateguard-control"  # hash tag of the throttle's Redis keys


class Throttled(ControlError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def login_policies(per_ip: str, per_email: str) -> tuple[Policy, Policy]:
    def policy(name: str, limit: str) -> Policy:
        return Policy(name, CONTROL_WORKSPACE, tuple(parse_limit(x) for x in limit.split(",")),
                      scope="ip", algorithm="sliding_log", failure_mode="open")
    return policy("login-ip", per_ip), policy("login-email", per_email)


class LoginThrottle:
    """``limiter`` is anything with ``async check(policy, scope) -> Decision | None``: a
    Limiter on Redis, or a MemoryStore."""

    def __init__(self, limiter, per_ip: str = "30/min", per_email: str = "10/min") -> None:
        self.limiter = limiter
        self.by_ip, self.by_email = login_policies(per_ip, per_email)

    async def check(self, client_ip: str, email: str) -> None:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        for policy, scope, what in ((self.by_ip, client_ip, "this address"),
                                    (self.by_email, digest, "this account")):
            decision = await self.limiter.check(policy, scope)
            if decision is not None and not decision.allowed:
                raise Throttled(f"too many sign-in attempts for {what}; retry in "
                                f"{decision.retry_after_seconds}s",
                                decision.retry_after_seconds)


THROTTLE = web.AppKey("login_throttle", LoginThrottle)


async def throttle_ctx(app: web.Application, redis_url: str | None, cluster: bool,
                       per_ip: str, per_email: str):
    """aiohttp cleanup context: the throttle on Redis when configured, else in memory."""
    from rateguard.limiter.memory_store import MemoryStore

    limiter = MemoryStore()
    if redis_url:
        from rateguard.limiter import Limiter, connect
        limiter = Limiter(connect(redis_url, cluster=cluster))
        await limiter.start()
    app[THROTTLE] = LoginThrottle(limiter, per_ip, per_email)
    yield
    if redis_url:
        await limiter.close()
