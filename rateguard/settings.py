"""Settings, read once from the environment into one frozen object.

Every variable is parsed here and nowhere else. A malformed value raises
:class:`SettingsError` naming the variable; components call :meth:`Settings.require`
for the variables they cannot run without, so a missing one stops the process at
start with one clear line instead of a traceback inside a client library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Callable, Mapping
from urllib.parse import urlsplit

from rateguard.errors import SettingsError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENVIRONMENTS = ("production", "development")
MAX_BUSY_POLL_US = 10_000  # PROXY_BUSY_POLL_US: past 10 ms, polling is just burning a core


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
        if not parts.netloc and not parts.path and not parts.query:
            raise ValueError("has no host")
        return value

    return parse


def _brokers(value: str) -> tuple[str, ...]:
    brokers = tuple(b.strip() for b in value.split(",") if b.strip())
    if not brokers:
        raise ValueError("lists no broker")
    for broker in brokers:
        host, sep, port = broker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{broker!r} is not host:port")
    return brokers


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _int_between(low: int, high: int, message: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(message)
        return number

    return parse


_port = _int_between(0, 65535, "must be a port number (0-65535)")
_busy_poll = _int_between(0, MAX_BUSY_POLL_US,
                          f"must be 0 (off) to {MAX_BUSY_POLL_US} microseconds")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be a positive number")
    return number


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _limits(value: str) -> str:
    from rateguard.errors import ConfigError
    from rateguard.limiter.policy import parse_limit

    try:
        for part in value.split(","):
            parse_limit(part)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


def _networks(value: str) -> tuple:
    from rateguard.proxy.client_address import parse_networks

    return parse_networks(value)


def _identifier(value: str) -> str:
    if not value.replace("_", "").isalnum():
        raise ValueError("must contain only letters, digits and underscores")
    return value


def _secret(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value


# name -> (parser, default, help). The help text feeds the README table and --help.
SPEC: dict[str, tuple[Callable[[str], object], object, str]] = {
    "DATABASE_URL": (_url("postgres", "postgresql"), None, "PostgreSQL URL (asyncpg)"),
    "REDIS_URL": (_url("redis", "rediss", "redis+cluster", "unix"), None, "Redis / Valkey URL"),
    "REDIS_CLUSTER": (_flag, False, "treat REDIS_URL as a Redis Cluster seed node"),
    "KAFKA_BROKERS": (_brokers, None, "comma-separated Kafka bootstrap servers"),
    "KAFKA_TOPIC": (str, "api-events", "events topic"),
    "CLICKHOUSE_URL": (_url("http", "https", "chdb"), None, "ClickHouse server or chdb:///path"),
    "CLICKHOUSE_DATABASE": (_identifier, "rateguard", "analytics database"),
    "JWT_SECRET": (_secret, None, "token signing secret, 32+ characters in production"),
    "ENCRYPTION_KEY": (_secret, None, "key for secrets at rest"),
    "LOG_LEVEL": (_choice(*LOG_LEVELS), "info", "logging level"),
    "RATEGUARD_ENV": (_choice(*ENVIRONMENTS), "production", "production or development"),
    "RATEGUARD_CONFIG": (str, None, "declarative YAML config for the proxy (DB-less mode)"),
    "PROXY_PORT": (_port, 3001, "proxy listen port"),
    "METRICS_PORT": (_port, 9090, "Prometheus metrics port of the proxy"),
    "HEALTH_PORT": (_port, 8080, "health/readiness port of the workers"),
    "PROXY_DRAIN_SECONDS": (_positive_float, 20.0, "SIGTERM: time given to in-flight requests"),
    "PROXY_MAX_BODY_BYTES": (_positive_int, 10 * 1024 * 1024 + 1024,
                             "default request body limit (an API may set its own)"),
    "UPSTREAM_CONNECT_TIMEOUT": (_positive_float, 5.0, "seconds to connect to an upstream"),
    "UPSTREAM_TIMEOUT": (_positive_float, 30.0, "default seconds to wait for an upstream response"),
    "REDIS_TIMEOUT_MS": (_positive_int, 250, "limiter call timeout in milliseconds"),
    "EVENT_QUEUE_SIZE": (_positive_int, 100_000, "events held in memory before spooling"),
    "EVENT_SPOOL_DIR": (str, None, "directory of the on-disk event spool (unset: no spool)"),
    "EVENT_SPOOL_MAX_BYTES": (_positive_int, 512 * 1024 * 1024,
                              "size cap of the event spool; past it events are dropped"),
    "EVENT_SPOOL_AFTER_SECONDS": (_positive_float, 10.0,
                                  "Kafka outage after which queued events move to the spool"),
    "PROXY_HEAD_TIMEOUT": (_positive_float, 10.0,
                           "seconds a client gets to send a request head (then 408)"),
    "PROXY_KEEPALIVE_TIMEOUT": (_positive_float, 75.0,
                                "seconds an idle client connection is kept open"),
    "PROXY_BODY_TIMEOUT": (_positive_float, 30.0,
                           "seconds a client may pause while sending a request body (then 408)"),
    "PROXY_BUSY_POLL_US": (_busy_poll, 0,
                           "microseconds the proxy polls instead of sleeping while a request "
                           "waits for Redis or its upstream: less latency for more CPU (0: off)"),
    "ALLOW_PRIVATE_UPSTREAMS": (_flag, False,
                                "production: allow upstreams on private and loopback addresses"),
    "KAFKA_LINGER_MS": (_positive_int, 500,
                        "how long events gather before a send (ms), unless 2,000 are queued"),
    "KAFKA_BATCH_BYTES": (_positive_int, 512 * 1024, "producer batch size"),
    "KAFKA_COMPRESSION": (_choice("none", "gzip", "lz4", "zstd"), "zstd", "producer compression"),
    "ANALYTICS_GROUP": (str, "rateguard-analytics", "analytics consumer group"),
    "ANALYTICS_BATCH_SIZE": (_positive_int, 20_000, "events per ClickHouse insert"),
    "ANALYTICS_BATCH_SECONDS": (_positive_float, 1.0, "longest wait before an insert"),
    "ANALYTICS_TTL_DAYS": (_positive_int, 90, "days of raw events kept in ClickHouse"),
    "ALERTS_INTERVAL_SECONDS": (_positive_float, 30.0, "seconds between alert rule evaluations"),
    "LOGIN_RATE_LIMIT_IP": (_limits, "30/min", "sign-in attempts per client address"),
    "LOGIN_RATE_LIMIT_EMAIL": (_limits, "10/min", "sign-in attempts per client address and "
                               "account (never per account alone: no lock-out from elsewhere)"),
    "SIGNUP": (_choice("open", "invite", "closed"), None,
               "who may create an account: open (anyone; a new workspace each), invite (only "
               "with an invitation), closed (only `rateguard users create`); default invite "
               "in production, open in development"),
    "SIGNUP_RATE_LIMIT_IP": (_limits, "10/h", "sign-up attempts per client address"),
    "TRUSTED_PROXIES": (_networks, (), "CIDRs of load balancers whose X-Forwarded-For/-Proto "
                        "the proxy and web believe"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    DATABASE_URL: str | None
    REDIS_URL: str | None
    REDIS_CLUSTER: bool
    KAFKA_BROKERS: tuple[str, ...] | None
    KAFKA_TOPIC: str
    CLICKHOUSE_URL: str | None
    CLICKHOUSE_DATABASE: str
    JWT_SECRET: str | None
    ENCRYPTION_KEY: str | None
    LOG_LEVEL: str
    RATEGUARD_ENV: str
    RATEGUARD_CONFIG: str | None
    PROXY_PORT: int
    METRICS_PORT: int
    HEALTH_PORT: int
    PROXY_DRAIN_SECONDS: float
    PROXY_MAX_BODY_BYTES: int
    UPSTREAM_CONNECT_TIMEOUT: float
    UPSTREAM_TIMEOUT: float
    REDIS_TIMEOUT_MS: int
    EVENT_QUEUE_SIZE: int
    EVENT_SPOOL_DIR: str | None
    EVENT_SPOOL_MAX_BYTES: int
    EVENT_SPOOL_AFTER_SECONDS: float
    PROXY_HEAD_TIMEOUT: float
    PROXY_KEEPALIVE_TIMEOUT: float
    PROXY_BODY_TIMEOUT: float
    PROXY_BUSY_POLL_US: int
    ALLOW_PRIVATE_UPSTREAMS: bool
    KAFKA_LINGER_MS: int
    KAFKA_BATCH_BYTES: int
    KAFKA_COMPRESSION: str
    ANALYTICS_GROUP: str
    ANALYTICS_BATCH_SIZE: int
    ANALYTICS_BATCH_SECONDS: float
    ANALYTICS_TTL_DAYS: int
    ALERTS_INTERVAL_SECONDS: float
    LOGIN_RATE_LIMIT_IP: str
    LOGIN_RATE_LIMIT_EMAIL: str
    SIGNUP: str | None
    SIGNUP_RATE_LIMIT_IP: str
    TRUSTED_PROXIES: tuple

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, (parse, default, _help) in SPEC.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                values[name] = default
                continue
            try:
                values[name] = parse(raw.strip())
            except ValueError as exc:
                reason = str(exc) if str(exc) and "invalid literal" not in str(exc) else "is malformed"
                raise SettingsError(f"{name}: {reason} (got {_redact(name, raw)!r})") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings._check_production()
        return settings

    def _check_production(self) -> None:
        if self.production and self.JWT_SECRET is not None and len(self.JWT_SECRET) < 32:
            raise SettingsError("JWT_SECRET: must be at least 32 characters in production")

    @property
    def production(self) -> bool:
        return self.RATEGUARD_ENV == "production"

    @property
    def signup_mode(self) -> str:
        """SIGNUP, or its default: invite in production (a stranger who reaches the
        dashboard gets no workspace), open in development."""
        return self.SIGNUP or ("invite" if self.production else "open")

    @property
    def redis_cluster(self) -> bool:
        return self.REDIS_CLUSTER or (self.REDIS_URL or "").startswith("redis+cluster://")

    def require(self, *names: str) -> None:
        """Raise SettingsError for the first of ``names`` that has no value."""
        for name in names:
            if getattr(self, name) is None:
                raise SettingsError(f"{name}: not set; {SPEC[name][2]} is required here")

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        env: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[field.name] = str(value)
        return env


def _redact(name: str, raw: str) -> str:
    if name in ("JWT_SECRET", "ENCRYPTION_KEY"):
        return "***"
    parts = urlsplit(raw)
    if parts.password:
        return raw.replace(parts.password, "***")
    return raw
