"""The immutable configuration snapshot the proxy serves from.

Built once per (re)load, then only read: lookups on the hot path are dict gets on
precomputed tables, never a database call.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Policy


# -- SSRF guard for configured upstreams ---------------------------------------------------

# Cloud metadata services by name (their addresses are link-local, refused below).
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.platformequinix.com",
})
# Always refused: link-local (169.254.169.254 and every cloud's metadata service, ECS
# task credentials, fe80::), "this network" (0.0.0.0 reaches the host itself), the
# metadata addresses outside link-local (AWS IPv6, Alibaba), multicast and broadcast.
_ALWAYS_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "fd00:ec2::254/128",
    "100.100.100.200/32", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32",
))
# Refused in production unless ALLOW_PRIVATE_UPSTREAMS: RFC 1918, carrier-grade NAT,
# unique-local IPv6, and loopback (the proxy's own ports, sidecars, node-local services).
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
    "127.0.0.0/8", "::1/128",
))


def _literal_address(host: str):
    """The IP address a host string denotes, also in the legacy IPv4 forms resolvers
    accept (``2852039166``, ``0xA9FEA9FE``, ``0251.0376.0251.0376``); None for a name."""
    host = host.strip("[]").rstrip(".")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not host or not all(c in "0123456789abcdefx." for c in host.lower()):
            return None
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class UpstreamGuard:
    """Which upstream addresses a config may name. ``allow_private=False`` (production
    without ALLOW_PRIVATE_UPSTREAMS) also refuses private and loopback addresses."""

    allow_private: bool = True

    def check_address(self, address) -> str | None:
        """Why an IP address is refused, or None. Also usable on resolved addresses."""
        if isinstance(address, str):
            address = _literal_address(address)
            if address is None:
                return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in _ALWAYS_REFUSED if net.version == address.version):
            return f"{address} is link-local, metadata or otherwise unroutable; never allowed"
        if not self.allow_private and any(
                address in net for net in _PRIVATE if net.version == address.version):
            return (f"{address} is a private or loopback address; refused in production "
                    "unless ALLOW_PRIVATE_UPSTREAMS=true")
        return None

    def check_host(self, host: str) -> str | None:
        name = host.lower().rstrip(".")
        if name in METADATA_HOSTS:
            return f"{host} is a cloud metadata service; never allowed"
        if not self.allow_private and (name == "localhost" or name.endswith(".localhost")):
            return (f"{host} is loopback; refused in production unless "
                    "ALLOW_PRIVATE_UPSTREAMS=true")
        address = _literal_address(name)
        return None if address is None else self.check_address(address)


ALWAYS = UpstreamGuard(allow_private=True)   # development, or ALLOW_PRIVATE_UPSTREAMS
STRICT = UpstreamGuard(allow_private=False)  # production default


def guard_from_env(environ: Mapping[str, str] | None = None) -> UpstreamGuard:
    """The guard for RATEGUARD_ENV and ALLOW_PRIVATE_UPSTREAMS (parsed as Settings does)."""
    import os

    from rateguard.settings import SPEC

    env = os.environ if environ is None else environ

    def value(name: str):
        parse, default, _ = SPEC[name]
        raw = (env.get(name) or "").strip()
        try:
            return parse(raw) if raw else default
        except ValueError:
            return default

    production = value("RATEGUARD_ENV") == "production"
    return STRICT if production and not value("ALLOW_PRIVATE_UPSTREAMS") else ALWAYS


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
        allowed (link-local, metadata); pass ``guard_from_env()`` or ``STRICT`` for
        the production rule on private and loopback addresses."""
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
