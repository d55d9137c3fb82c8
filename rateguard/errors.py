"""The exceptions RateGuard raises on purpose.

    RateGuardError
    ├── SettingsError      a missing or malformed environment variable (one line, names it)
    ├── ConfigError        a malformed declarative config (YAML) or policy definition
    ├── LimiterUnavailable Redis could not answer the limiter in time (the connection,
    │                      a shard or the server: counts toward a circuit)
    ├── LimitCallFailed    Redis answered one limiter call with an error (a script
    │                      error, WRONGTYPE, OOM for one key): that request alone fails
    └── ServerStartError   an embedded server (`rateguard up`, tests) did not come up

Anything else escaping a component is a bug, not an expected failure.
"""


class RateGuardError(Exception):
    """Base class: the message is meant for the operator, on one line."""


class SettingsError(RateGuardError):
    pass


class ConfigError(RateGuardError):
    pass


class LimiterUnavailable(RateGuardError):
    pass


class LimitCallFailed(RateGuardError):
    """One limiter call was answered with an error. It says nothing about the other
    calls on the same connection, so it never opens a circuit."""


class ServerStartError(RateGuardError):
    pass
