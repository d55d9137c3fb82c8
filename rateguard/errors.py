"""The exceptions RateGuard raises on purpose.

    RateGuardError
    ├── SettingsError      a missing or malformed environment variable (one line, names it)
    ├── ConfigError        a malformed declarative config (YAML) or policy definition
    ├── LimiterUnavailable Redis could not answer the limiter in time
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


class ServerStartError(RateGuardError):
    pass
