"""What a control-plane operation refuses, each with the HTTP status the API answers.

    ControlError
    ├── Invalid        422  a field is malformed (names the field)
    ├── Unauthorized   401  no valid credentials
    ├── Forbidden      403  the role does not allow it
    ├── NotFound       404  absent, or in a workspace the caller does not belong to
    └── Conflict       409  clashes with existing data (a taken route, a policy in use)
"""

from __future__ import annotations

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
