"""The immutable configuration snapshot the proxy serves from.

Built once per (re)load, then only read: lookups on the hot path are dict gets on
precomputed tables, never a database call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Policy
from rateguard.net.egress import ALWAYS, STRICT, EgressPolicy  # noqa: F401 (re-exported)


# The SSRF rule for upstreams is the one egress policy (rateguard/net/egress.py); these
# names stay for the callers that take a guard.
UpstreamGuard = EgressPolicy


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str  # prefix added before the forwarded path, "" or "/v2"
    host_header: bytes
    # "scheme://host:port": what a pooled connection can serve (a str caches its hash)
    pool_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_key", f"{self.scheme}://{self.host}:{self.port}")

    @classmethod
    def parse(cls, url: str, guard: UpstreamGuard = ALWAYS) -> "Upstream":
        """Parse and check an upstream URL. The default guard refuses what is never
        allowed (link-local, metadata); pass the policy built from Settings
        (``rateguard.net.egress.from_settings``) for the production rule on private and
        loopback addresses."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {url!r}: expected http(s)://host[:port][/path]")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"upstream {parts.scheme}://...@{parts.hostname}: credentials "
                              "in the URL are not allowed; use upstream_headers")
        refused = guard.check_host(parts.hostname)
        if refused:
            raise ConfigError(f"upstream {url!r}: {refused}")
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"upstream {url!r}: invalid port") from None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default = (parts.scheme == "http" and port == 80) or (parts.scheme == "https" and port == 443)
        host = parts.hostname if default else f"{parts.hostname}:{port}"
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), host.encode())

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@dataclass(frozen=True, slots=True)
class Api:
    id: str
    workspace_id: str
    prefix: str  # path prefix, "/" or "/echo" (no trailing slash except the root)
    upstream: Upstream
    host: str | None = None  # None: any host
    strip_prefix: bool = True
    policy_id: str | None = None
    timeout: float | None = None  # seconds; None: the proxy's default
    max_body_bytes: int | None = None
    upstream_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    workspace_id: str
    key_hash: str
    policy_id: str | None = None
    revoked: bool = False
    expires_at: float | None = None  # unix seconds
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the proxy needs, indexed for the hot path."""

    apis: tuple[Api, ...] = ()
    keys: tuple[ApiKey, ...] = ()
    policies: tuple[Policy, ...] = ()
    version: str = "0"
    # Route ownership (PostgreSQL mode; None in YAML mode: the operator wrote every
    # route): host -> workspace id, "*" for the any-host routes. An API routes only on a
    # host its workspace owns (any host: "*" unowned or its own), and an owned host's
    # table is closed: its requests never fall back to another workspace's any-host
    # routes (the owner's own are copied into it).
    host_owners: Mapping[str, str] | None = None
    # host (lowercase, no port) or "" -> {prefix: api}; routing walks a path's own
    # prefixes, longest first, so its cost is the path's depth, not the API count.
    # A closed host table holds the key "" (see routing.match).
    routes: dict = field(init=False, default_factory=dict)
    # APIs left out of the routes: their workspace does not own their host
    unrouted: tuple = field(init=False, default=())
    keys_by_hash: dict = field(init=False, default_factory=dict)
    policies_by_id: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        routes: dict[str, dict[str, Api]] = {}
        owners = self.host_owners
        unrouted = []
        for api in self.apis:
            if owners is not None:
                if api.host is None:
                    owner = owners.get("*", api.workspace_id)  # unowned: shared
                else:
                    owner = owners.get(api.host.lower())
                if owner != api.workspace_id:
                    unrouted.append(api)
                    continue
            table = routes.setdefault((api.host or "").lower(), {})
            if api.prefix in table:
                raise ConfigError(
                    f"api {api.id!r}: route {api.host or '*'}{api.prefix} is taken twice")
            table[api.prefix] = api
        for host, owner in (owners or {}).items():
            if host == "*":
                continue
            table = routes.setdefault(host, {})
            for prefix, api in routes.get("", {}).items():
                if api.workspace_id == owner:
                    table.setdefault(prefix, api)
            table[""] = None
        object.__setattr__(self, "routes", routes)
        object.__setattr__(self, "unrouted", tuple(unrouted))
        object.__setattr__(self, "keys_by_hash", {k.key_hash: k for k in self.keys})
        policies = {(p.workspace_id, p.id): p for p in self.policies}
        object.__setattr__(self, "policies_by_id", policies)
        for api in self.apis:
            if api.policy_id and (api.workspace_id, api.policy_id) not in policies:
                raise ConfigError(f"api {api.id!r}: unknown policy {api.policy_id!r}")
        for key in self.keys:
            if key.policy_id and (key.workspace_id, key.policy_id) not in policies:
                raise ConfigError(f"key {key.id!r}: unknown policy {key.policy_id!r}")

    def policy(self, workspace_id: str, policy_id: str | None) -> Policy | None:
        if policy_id is None:
            return None
        return self.policies_by_id.get((workspace_id, policy_id))
