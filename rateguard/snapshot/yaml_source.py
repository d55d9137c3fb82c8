"""DB-less mode: the snapshot from a declarative YAML file, reloaded when it changes.

    workspaces:
      - id: demo
        policies:
          - {id: default, limits: [10/min], scope: key, mode: enforce,
             algorithm: sliding_window, failure_mode: open}
        apis:
          - {id: echo, prefix: /echo, upstream: "http://127.0.0.1:8081", policy: default}
        keys:
          - {id: demo-key, sha256: <hex of the key>, policy: default}

Every error names the file and the field, e.g.
``demo.yaml: workspaces[0].apis[0].upstream: expected http(s)://host[:port][/path]``.

Upstreams pass the egress policy (rateguard/net/egress.py): link-local and cloud metadata
addresses are always refused; files loaded by the proxy (``load_file``, ``YamlSource``)
also refuse private and loopback addresses in production unless
ALLOW_PRIVATE_UPSTREAMS is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
from datetime import datetime, timezone
from typing import Any, Callable

import yaml

from rateguard.errors import ConfigError
from rateguard.limiter.policy import Policy, parse_limit
from rateguard.snapshot.model import ALWAYS, Api, ApiKey, Snapshot, Upstream, UpstreamGuard

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _expect(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def _ident(value: Any, where: str) -> str:
    _expect(isinstance(value, str) and bool(_ID.match(value)), where,
            "must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def _mapping(value: Any, where: str, allowed: set[str]) -> dict:
    _expect(isinstance(value, dict), where, "must be a mapping")
    unknown = set(value) - allowed
    _expect(not unknown, where, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    return value


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{where}: must be an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _positive(value: Any, where: str, kind: type = float) -> Any:
    if value is None:
        return None
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and math.isfinite(value), where, "must be a positive, finite number")
    return kind(value)


def parse_config(data: Any, source: str = "config", guard: UpstreamGuard = ALWAYS) -> Snapshot:
    """Build a Snapshot from parsed YAML; raise ConfigError naming the bad field."""
    root = _mapping(data if data is not None else {}, source, {"workspaces"})
    workspaces = root.get("workspaces") or []
    _expect(isinstance(workspaces, list), f"{source}: workspaces", "must be a list")
    apis, keys, policies = [], [], []
    for w, ws in enumerate(workspaces):
        at = f"{source}: workspaces[{w}]"
        ws = _mapping(ws, at, {"id", "name", "policies", "apis", "keys"})
        ws_id = _ident(ws.get("id"), f"{at}.id")
        for p, pol in enumerate(ws.get("policies") or []):
            where = f"{at}.policies[{p}]"
            pol = _mapping(pol, where, {"id", "limits", "scope", "mode", "algorithm",
                                        "failure_mode"})
            limits = pol.get("limits")
            _expect(isinstance(limits, list) and limits, f"{where}.limits",
                    "must be a non-empty list such as [100/s, 5000/h]")
            try:
                policies.append(Policy(
                    id=_ident(pol.get("id"), f"{where}.id"), workspace_id=ws_id,
                    limits=tuple(parse_limit(item) for item in limits),
                    scope=pol.get("scope", "key"), mode=pol.get("mode", "enforce"),
                    algorithm=pol.get("algorithm", "sliding_window"),
                    failure_mode=pol.get("failure_mode", "open")))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        for a, api in enumerate(ws.get("apis") or []):
            where = f"{at}.apis[{a}]"
            api = _mapping(api, where, {"id", "name", "host", "prefix", "upstream",
                                        "strip_prefix", "policy", "timeout_seconds",
                                        "max_body_bytes", "upstream_headers"})
            prefix = api.get("prefix", "/")
            _expect(isinstance(prefix, str) and prefix.startswith("/") and ".." not in prefix,
                    f"{where}.prefix", "must be a path starting with '/'")
            prefix = prefix.rstrip("/") or "/"
            try:
                upstream = Upstream.parse(str(api.get("upstream", "")), guard)
            except ConfigError as exc:
                raise ConfigError(f"{where}.upstream: {exc}") from None
            headers = api.get("upstream_headers") or {}
            _expect(isinstance(headers, dict), f"{where}.upstream_headers", "must be a mapping")
            for name, value in headers.items():
                _expect(isinstance(name, str) and bool(_HEADER.match(name)),
                        f"{where}.upstream_headers", f"{name!r} is not a header name")
                _expect("\r" not in str(value) and "\n" not in str(value),
                        f"{where}.upstream_headers.{name}", "must not contain line breaks")
            host = api.get("host")
            _expect(host is None or isinstance(host, str), f"{where}.host", "must be a string")
            apis.append(Api(
                id=_ident(api.get("id"), f"{where}.id"), workspace_id=ws_id, prefix=prefix,
                upstream=upstream, host=host.lower() if host and host != "*" else None,
                strip_prefix=bool(api.get("strip_prefix", True)),
                policy_id=api.get("policy"),
                timeout=_positive(api.get("timeout_seconds"), f"{where}.timeout_seconds"),
                max_body_bytes=_positive(api.get("max_body_bytes"), f"{where}.max_body_bytes", int),
                upstream_headers=tuple((n.encode(), str(v).encode()) for n, v in headers.items())))
        for k, key in enumerate(ws.get("keys") or []):
            where = f"{at}.keys[{k}]"
            key = _mapping(key, where, {"id", "name", "sha256", "policy", "revoked",
                                        "expires_at", "not_before"})
            digest = str(key.get("sha256", "")).lower()
            _expect(bool(_HEX64.match(digest)), f"{where}.sha256",
                    "must be the 64-hex-digit SHA-256 of the key (rateguard keys hash)")
            keys.append(ApiKey(
                id=_ident(key.get("id"), f"{where}.id"), workspace_id=ws_id, key_hash=digest,
                policy_id=key.get("policy"), revoked=bool(key.get("revoked", False)),
                expires_at=_timestamp(key.get("expires_at"), f"{where}.expires_at"),
                not_before=_timestamp(key.get("not_before"), f"{where}.not_before")))
    try:
        return Snapshot(tuple(apis), tuple(keys), tuple(policies))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_file(path: str, guard: UpstreamGuard | None = None) -> Snapshot:
    """The snapshot in a YAML file. ``guard``: the egress policy built from Settings
    (``rateguard.net.egress.from_settings``); by default only what is never allowed
    (link-local, metadata) is refused."""
    name = os.path.basename(path)
    guard = ALWAYS if guard is None else guard
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{name}: not valid YAML{at}") from None
    snapshot = parse_config(data, name, guard)
    object.__setattr__(snapshot, "version", hashlib.sha256(raw).hexdigest()[:12])
    return snapshot


class YamlSource:
    """Loads the file at start; ``watch`` reloads it when its contents change.
    A broken edit is logged and ignored: the last good snapshot keeps serving."""

    def __init__(self, path: str, interval: float = 1.0,
                 guard: UpstreamGuard | None = None) -> None:
        self.path = path
        self.interval = interval
        self.guard = ALWAYS if guard is None else guard
        self._version = None

    async def load(self) -> Snapshot:
        snapshot = load_file(self.path, self.guard)
        self._version = snapshot.version
        return snapshot

    async def watch(self, apply: Callable[[Snapshot], None]) -> None:
        last_mtime = None
        while True:
            await asyncio.sleep(self.interval)
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except OSError:
                continue
            if mtime == last_mtime:
                continue
            last_mtime = mtime
            try:
                snapshot = load_file(self.path, self.guard)
            except ConfigError as exc:
                log.error("config reload failed, keeping the last good one: %s", exc)
                continue
            if snapshot.version != self._version:
                self._version = snapshot.version
                apply(snapshot)
                log.info("config reloaded from %s (version %s)", self.path, snapshot.version)
