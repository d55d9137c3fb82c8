"""The gateway's decisions for one request: route, authenticate, limit.

This is the logic of the request path with the HTTP layer kept out: it receives the
parsed request head and answers with an :class:`Admission` saying either "forward to
this API with these extra headers" or "answer with this status". The only I/O is the
limiter call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rateguard.events.schema import Event
from rateguard.limiter import Limiter
from rateguard.limiter.policy import Policy
from rateguard.proxy import headers as h
from rateguard.proxy.routing import host_of, match, safe_path
from rateguard.snapshot.keys import PREFIX, hash_key
from rateguard.snapshot.model import Api, ApiKey, Snapshot

_BEARER = b"bearer "
_KEY_PREFIX = PREFIX.encode()
# Presented keys and Host headers already seen, with what they resolved to: a client
# sends the same ones request after request, and SHA-256 + hex was 2.6 % of the
# proxy's CPU, the Host parsing 1.4 %. Emptied when full and when the snapshot changes.
MAX_CACHED = 10_000
MAX_CACHED_BYTES = 256  # longer values are looked up, not kept (memory stays bounded)
_UNKNOWN = object()


@dataclass(slots=True)
class Admission:
    """What to do with a request. ``status == 0`` means forward to ``api``."""

    status: int
    api: Api | None = None
    upstream_path: str = ""
    key: ApiKey | None = None
    policy: Policy | None = None
    decision: str = "allowed"  # the event's decision
    error: str = ""
    message: str = ""
    lines: list | None = None  # extra response header lines (RateLimit-*)
    drop_authorization: bool = False


def extract_key(authorization: bytes | None, x_api_key: bytes | None) -> tuple[bytes | None, bool]:
    """The presented API key and whether it came in ``Authorization``."""
    if x_api_key:
        return x_api_key.strip(), False
    if authorization and authorization[:7].lower() == _BEARER:
        token = authorization[7:].strip()
        if token.startswith(_KEY_PREFIX):
            return token, True
    return None, False


def _ms(value: float) -> float:
    """Milliseconds to the microsecond (``round(value, 3)`` costs several times more:
    it rounds through a decimal string)."""
    return int(value * 1000.0 + 0.5) / 1000.0


class Gateway:
    def __init__(self, snapshot: Snapshot, limiter: Limiter, *, instance: str,
                 clock=time.time) -> None:
        self.limiter = limiter
        self._keys: dict[bytes, ApiKey | None] = {}
        self._hosts: dict[bytes, str] = {}
        self.snapshot = snapshot
        self.instance = instance
        self._clock = clock

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._keys = {}  # a new dict: a lookup under way keeps the old one

    def lookup_key(self, presented: bytes) -> ApiKey | None:
        """The configured key with this value, found by its SHA-256 digest (a dict
        lookup by digest tells an attacker nothing about stored keys); remembered."""
        keys = self._keys
        key = keys.get(presented, _UNKNOWN)
        if key is _UNKNOWN:
            key = self._snapshot.keys_by_hash.get(hash_key(presented))
            if len(presented) <= MAX_CACHED_BYTES:
                if len(keys) >= MAX_CACHED:
                    keys.clear()
                keys[presented] = key
        return key  # type: ignore[return-value]

    def host(self, value: bytes | None) -> str:
        """``host_of`` of a Host header, remembered."""
        if value is None:
            return ""
        hosts = self._hosts
        host = hosts.get(value)
        if host is None:
            host = host_of(value)
            if len(value) <= MAX_CACHED_BYTES:
                if len(hosts) >= MAX_CACHED:
                    hosts.clear()
                hosts[value] = host
        return host

    def authenticate(self, api: Api, presented: bytes | None) -> ApiKey | str:
        """The key, or the reason it is refused."""
        if not presented:
            return "missing API key: send it as 'Authorization: Bearer rg_...' or 'X-API-Key'"
        key = self.lookup_key(presented)
        if key is None or key.workspace_id != api.workspace_id:
            return "unknown API key"
        if key.revoked:
            return "API key revoked"
        now = self._clock()
        if key.expires_at is not None and now >= key.expires_at:
            return "API key expired"
        if key.not_before is not None and now < key.not_before:
            return "API key not yet valid"
        return key

    async def admit(self, host: bytes | None, path: str, authorization: bytes | None,
                    x_api_key: bytes | None, client_ip: str) -> Admission:
        if not safe_path(path):
            return Admission(400, error="bad_request", message="path is not allowed",
                             decision="error")
        routed = match(self._snapshot.routes, self.host(host), path)
        if routed is None:
            return Admission(404, error="not_found", message="no API serves this path",
                             decision="error")
        api, upstream_path = routed
        presented, in_authorization = extract_key(authorization, x_api_key)
        key = self.authenticate(api, presented)
        if isinstance(key, str):
            return Admission(401, api=api, error="unauthorized", message=key,
                             decision="unauthorized")
        admission = Admission(0, api=api, upstream_path=upstream_path, key=key,
                              drop_authorization=in_authorization)
        policy = self._snapshot.policy(api.workspace_id, key.policy_id or api.policy_id)
        if policy is None:
            return admission
        admission.policy = policy
        scope = policy.scope
        scope_value = key.id if scope == "key" else client_ip if scope == "ip" else api.id
        decision = await self.limiter.check(policy, scope_value)
        if decision is None:
            admission.status = 503
            admission.error = "limiter_unavailable"
            admission.message = "rate limiter unavailable and the policy fails closed"
            admission.decision = "error"
            return admission
        admission.lines = h.ratelimit_lines(decision, policy.header_bytes)
        if not decision.allowed:
            if policy.shadow:
                admission.decision = "shadow_limited"
            else:
                admission.status = 429
                admission.error = "rate_limited"
                admission.message = (f"rate limit {decision.limit} exceeded; retry in "
                                     f"{decision.retry_after_seconds}s")
                admission.decision = "limited"
        return admission

    def event(self, request_id: str, ts_ms: int, admission: Admission | None, method: str,
              host: str, path: str, status: int, latency_ms: float, upstream_ms: float,
              bytes_in: int, bytes_out: int, client_ip: str, user_agent: str,
              decision: str | None = None, close_code: int = 0) -> Event:
        api = admission.api if admission else None
        key = admission.key if admission else None
        policy = admission.policy if admission else None
        return Event(
            request_id, ts_ms, api.workspace_id if api else "", api.id if api else "",
            key.id if key else "", method, host, path, status, _ms(latency_ms),
            _ms(upstream_ms), bytes_in, bytes_out, client_ip, user_agent,
            decision or (admission.decision if admission else "error"),
            policy.id if policy else "", self.instance, close_code)
