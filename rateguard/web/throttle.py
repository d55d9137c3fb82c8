"""Login throttling with RateGuard's own limiter.

Every sign-in attempt (API or dashboard, they share the login operation) is counted
per client address and per client address + account, with the same Lua limiter the
proxy uses (sliding log, exact across web replicas when Redis is configured; per replica
in memory otherwise). Past either limit the answer is 429 with Retry-After, before the
password is even checked.

Nothing is counted per account alone: that would let anyone lock any account out of
sign-in from their own address (README "Security"). An IPv6 client is counted by its
/64, the block one subscriber usually gets, so rotating addresses inside it buys nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress

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


def login_policies(per_ip: str, per_account: str) -> tuple[Policy, Policy]:
    def policy(name: str, limit: str) -> Policy:
        return Policy(name, CONTROL_WORKSPACE, tuple(parse_limit(x) for x in limit.split(",")),
                      scope="ip", algorithm="sliding_log", failure_mode="open")
    return policy("login-ip", per_ip), policy("login-ip-account", per_account)


def address_key(client_ip: str) -> str:
    """The client as the throttle counts it: an IPv4 address, or an IPv6 /64."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip[:64] or "-"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginThrottle:
    """``limiter`` is anything with ``async check(policy, scope) -> Decision | None``: a
    Limiter on Redis, or a MemoryStore."""

    def __init__(self, limiter, per_ip: str = "30/min", per_account: str = "10/min",
                 signup_per_ip: str | None = None) -> None:
        self.limiter = limiter
        self.by_ip, self.by_account = login_policies(per_ip, per_account)
        self.signups = None
        if signup_per_ip:
            self.signups = Policy("signup-ip", CONTROL_WORKSPACE, tuple(
                parse_limit(x) for x in signup_per_ip.split(",")), scope="ip",
                algorithm="sliding_log", failure_mode="open")

    async def check_signup(self, client_ip: str) -> None:
        """Sign-up attempts per client address (IPv6: per /64)."""
        if self.signups is None:
            return
        decision = await self.limiter.check(self.signups, address_key(client_ip))
        if decision is not None and not decision.allowed:
            raise Throttled(f"too many sign-ups from this address; retry in "
                            f"{decision.retry_after_seconds}s", decision.retry_after_seconds)

    async def check(self, client_ip: str, email: str) -> None:
        address = address_key(client_ip)
        account = hashlib.sha256(f"{address}|{email.strip().lower()}".encode()).hexdigest()[:32]
        for policy, scope, what in ((self.by_ip, address, "from this address"),
                                    (self.by_account, account,
                                     "for this account from this address")):
            decision = await self.limiter.check(policy, scope)
            if decision is not None and not decision.allowed:
                raise Throttled(f"too many sign-in attempts {what}; retry in "
                                f"{decision.retry_after_seconds}s",
                                decision.retry_after_seconds)


THROTTLE = web.AppKey("login_throttle", LoginThrottle)


async def throttle_ctx(app: web.Application, redis_url: str | None, cluster: bool,
                       per_ip: str, per_email: str, signup_per_ip: str | None = None):
    """aiohttp cleanup context: the throttle on Redis when configured, else in memory."""
    from rateguard.limiter.memory_store import MemoryStore

    limiter = MemoryStore()
    if redis_url:
        from rateguard.limiter import Limiter, connect
        limiter = Limiter(connect(redis_url, cluster=cluster))
        await limiter.start()
    app[THROTTLE] = LoginThrottle(limiter, per_ip, per_email, signup_per_ip)
    yield
    if redis_url:
        await limiter.close()
