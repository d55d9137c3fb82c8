"""Policies and decisions: pure data and arithmetic, no I/O.

A policy is one or more limits (``100/s``, ``5000/h``), a scope (whose requests share a
counter), a mode (``enforce`` or ``shadow``), an algorithm and a failure mode for when
Redis cannot answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rateguard.errors import ConfigError

SCOPES = ("key", "ip", "api")
MODES = ("enforce", "shadow")
ALGORITHMS = ("sliding_window", "sliding_log")
FAILURE_MODES = ("open", "closed")

# The Lua script's short algorithm names.
SCRIPT_ALGORITHM = {"sliding_window": "sw", "sliding_log": "log"}

_UNITS_MS = {
    "ms": 1, "s": 1000, "sec": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
}
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    window_ms: int

    @property
    def window_label(self) -> str:
        """Short, stable window name used in Redis keys: ``1s``, ``60s``, ``250ms``."""
        if self.window_ms % 1000 == 0:
            return f"{self.window_ms // 1000}s"
        return f"{self.window_ms}ms"

    def __str__(self) -> str:
        return f"{self.count}/{self.window_label}"


def parse_limit(text: str) -> Limit:
    """``"100/s"``, ``"5000/h"``, ``"10/5m"``, ``"20/minute"`` -> Limit."""
    match = _LIMIT.match(str(text).lower())
    if not match:
        raise ConfigError(f"limit {text!r}: expected <count>/<window>, e.g. 100/s or 5000/h")
    count, multiple, unit = int(match[1]), match[2], match[3]
    if unit not in _UNITS_MS:
        raise ConfigError(f"limit {text!r}: unknown unit {unit!r} (use ms, s, m, h or d)")
    window = _UNITS_MS[unit] * (int(multiple) if multiple else 1)
    if count <= 0 or window <= 0:
        raise ConfigError(f"limit {text!r}: count and window must be positive")
    return Limit(count, window)


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    workspace_id: str
    limits: tuple[Limit, ...]
    scope: str = "key"
    mode: str = "enforce"
    algorithm: str = "sliding_window"
    failure_mode: str = "open"
    # Derived once, used on every response.
    header: str = field(init=False, default="")
    header_bytes: bytes = field(init=False, default=b"")
    script_args: tuple = field(init=False, default=())
    # The Redis store's cache of packed commands for this policy (see redis_store.py).
    commands: dict = field(init=False, default_factory=dict, compare=False, hash=False,
                           repr=False)
    # Scope values Redis refused, with the local time before which it will refuse again
    # (see proxy/limiting.py).
    denied: dict = field(init=False, default_factory=dict, compare=False, hash=False,
                         repr=False)

    def __post_init__(self) -> None:
        if not self.limits:
            raise ConfigError(f"policy {self.id!r}: needs at least one limit")
        for name, value, allowed in (
            ("scope", self.scope, SCOPES),
            ("mode", self.mode, MODES),
            ("algorithm", self.algorithm, ALGORITHMS),
            ("failure_mode", self.failure_mode, FAILURE_MODES),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"policy {self.id!r}: {name} {value!r} is not one of {', '.join(allowed)}")
        windows = [limit.window_ms for limit in self.limits]
        if len(set(windows)) != len(windows):
            raise ConfigError(f"policy {self.id!r}: two limits share a window")
        object.__setattr__(self, "header", policy_header(self.limits))
        object.__setattr__(self, "header_bytes", self.header.encode())
        args: list = [SCRIPT_ALGORITHM[self.algorithm], 1]
        for limit in self.limits:
            args += [limit.count, limit.window_ms]
        object.__setattr__(self, "script_args", tuple(args))

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"

    def redis_keys(self, scope_value: str) -> list[str]:
        """The counters of this policy for one scope value, one per limit."""
        prefix = f"rg:{{{self.workspace_id}}}:rl:{self.id}:{scope_value}:"
        return [prefix + limit.window_label for limit in self.limits]


def policy_header(limits: tuple[Limit, ...]) -> str:
    """``RateLimit-Policy`` value: ``100;w=1, 5000;w=3600`` (window in seconds)."""
    return ", ".join(
        f"{limit.count};w={_seconds(limit.window_ms)}" for limit in limits)


def _seconds(window_ms: int) -> str:
    if window_ms % 1000 == 0:
        return str(window_ms // 1000)
    return f"{window_ms / 1000:g}"


@dataclass(slots=True)
class Decision:
    """The limiter's answer for one request under one policy."""

    allowed: bool
    limit: Limit
    remaining: int
    reset_ms: int
    retry_after_ms: int

    @property
    def reset_seconds(self) -> int:
        reset_ms = self.reset_ms
        return -(-reset_ms // 1000) if reset_ms > 0 else 0

    @property
    def retry_after_seconds(self) -> int:
        retry_ms = self.retry_after_ms
        return -(-retry_ms // 1000) if retry_ms > 1000 else 1


def decision_from_reply(policy: Policy, reply: list) -> Decision:
    """Turn the Lua script's reply ``[allowed, index, remaining, reset, retry]``
    into a Decision."""
    allowed, index, remaining, reset_ms, retry_ms = reply
    return Decision(allowed == 1, policy.limits[index - 1], remaining, reset_ms, retry_ms)
