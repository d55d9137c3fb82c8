"""The immutable configuration snapshot the proxy serves from.

Built once per (re)load, then only read: lookups on the hot path are dict gets on
precomputed tables, never a database call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Policy


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str  # prefix added before the forwarded path, "" or "/v2"
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> "Upstream":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {url!r}: expected http(s)://host[:port][/path]")
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
    # host (lowercase, no port) or "" -> [(prefix, api)] longest prefix first
    routes: dict = field(init=False, default_factory=dict)
    keys_by_hash: dict = field(init=False, default_factory=dict)
    policies_by_id: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        routes: dict[str, list[tuple[str, Api]]] = {}
        for api in self.apis:
            routes.setdefault((api.host or "").lower(), []).append((api.prefix, api))
        for host, table in routes.items():
            seen = set()
            for prefix, api in table:
                if prefix in seen:
                    raise ConfigError(f"api {api.id!r}: route {host or '*'}{prefix} is taken twice")
                seen.add(prefix)
            table.sort(key=lambda item: len(item[0]), reverse=True)
        object.__setattr__(self, "routes", routes)
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
