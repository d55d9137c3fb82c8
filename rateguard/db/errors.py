"""What a control-plane operation refuses, each with the HTTP status the API answers.

    ControlError
    ├── Invalid        422  a field is malformed (names the field)
    ├── Unauthorized   401  no valid credentials
    ├── Forbidden      403  the role does not allow it
    ├── NotFound       404  absent, or in a workspace the caller does not belong to
    └── Conflict       409  clashes with existing data (a taken route, a policy in use)

    DatabaseUnavailable  503  PostgreSQL cannot be reached (down, restarting, too slow)

DatabaseUnavailable is not a ControlError on purpose: a page that shows a ControlError
inside its own form would swallow it; it must reach the web app's middleware, which
answers 503 with Retry-After (JSON under /api, an error page elsewhere).
"""

from __future__ import annotations

import asyncio

import asyncpg

from rateguard.errors import RateGuardError


class ControlError(RateGuardError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(ControlError):
    status = 422
    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field)


class Unauthorized(ControlError):
    status = 401
    code = "unauthorized"


class Forbidden(ControlError):
    status = 403
    code = "forbidden"


class NotFound(ControlError):
    status = 404
    code = "not_found"


class Conflict(ControlError):
    status = 409
    code = "conflict"


class DatabaseUnavailable(RateGuardError):
    """PostgreSQL did not answer: the request may succeed once it is back."""

    status = 503
    code = "database_unavailable"
    retry_after = 5

    def __init__(self, cause: BaseException) -> None:
        # The cause goes to the log only: clients learn what and when, not where.
        self.detail = f"{type(cause).__name__}: {cause}" if str(cause) \
            else type(cause).__name__
        self.message = f"the database (PostgreSQL) is unavailable; retry in {self.retry_after}s"
        super().__init__(f"{self.message} ({self.detail})")


# SQLSTATEs that mean "this server cannot serve you now", not "your query is wrong":
# class 08 connection exceptions, shutdown/crash/starting up, too many connections.
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "53300"}


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL could not be reached or stopped answering,
    as opposed to a query it refused (a bug or a constraint, which stays an error)."""
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.ConnectionDoesNotExistError,
                        asyncpg.PostgresConnectionError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state.startswith("08") or state in _UNAVAILABLE_STATES
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc)
    return False
