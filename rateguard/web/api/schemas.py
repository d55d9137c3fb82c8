"""JSON Schemas (OpenAPI 3.1 dialect) of what the API takes and answers.

Response schemas are exact (``additionalProperties: false``): the schemathesis test checks
every response the server sends against them.
"""

from __future__ import annotations

from rateguard.db.validate import _RESERVED_HEADERS
from rateguard.limiter.policy import ALGORITHMS, FAILURE_MODES, MODES, SCOPES


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict, required: list[str] | None = None, *, extra: bool = False) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": extra}


def items_of(name: str) -> dict:
    return obj({"items": {"type": "array", "items": ref(name)}})


STR = {"type": "string"}


def _not_text() -> str:
    """The characters printable text refuses (validate.printable: categories Cc, Cf, Cs,
    Zl, Zp, and Zs but the space), as the inside of a regex character class; the BMP as
    \\u escapes, the few beyond it as the characters themselves (ECMA-262 and Python
    read both)."""
    import unicodedata

    from rateguard.db.validate import NOT_TEXT_CATEGORIES

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    # Surrogates (Cs) are left out: no regex engine schemathesis uses can name them, and a
    # lone one (\\ud800) is refused anywhere in a body like NUL (registry._check_values).
    IN_PATTERN = NOT_TEXT_CATEGORIES - {"Cs"}
    # Planes 4 to 13, 15 and 16 hold no such character (unassigned or private use).
    codes = [*range(0x40000), *range(0xE0000, 0xF0000)]
    runs, start = [], None
    for index, code in enumerate(codes + [-1]):
        refused = code > 0x20 and unicodedata.category(chr(code)) in IN_PATTERN \
            or 0 <= code < 0x20
        if start is not None and (not refused or code != codes[index - 1] + 1):
            runs.append((start, codes[index - 1]))
            start = None
        if refused and start is None:
            start = code
    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in runs)


NOT_TEXT = _not_text()
PRINTABLE = f"^[^{NOT_TEXT}]*$"
# printable, neither starting nor ending with a space (the server trims them)
TRIMMED = f"^([^{NOT_TEXT} ]([^{NOT_TEXT}]*[^{NOT_TEXT} ])?)?$"
NO_NUL = "^[^\\x00]*$"  # no string anywhere in a body may hold a NUL (registry._check_values)
ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NO_NUL}
NULL_ID = {"type": ["string", "null"], "minLength": 1, "maxLength": 64, "pattern": NO_NUL}
# an id in a query string (Ctx.query_str): printable, 1 to 64 characters
QUERY_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": PRINTABLE}
TIME = {"type": "string", "format": "date-time"}
NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
INT = {"type": "integer", "minimum": 0}
ROLE = {"type": "string", "enum": ["owner", "admin", "viewer"]}
NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": TRIMMED,
        "description": "printable text (no control, format or separator character but the "
                       "space), 1 to 100 characters, no spaces at either end"}


def _any_case(word: str) -> str:
    return "".join(f"[{ch.upper()}{ch}]" if ch.isalpha() else ch for ch in word)


# parse_limit's syntax (rateguard/limiter/policy.py): ASCII digits, a unit in any case,
# spaces (Python's ASCII \s) around each part.
_SPACE = "[\t\n\x0b\x0c\r ]*"
_UNITS = ("ms", "s", "sec", "second", "seconds", "m", "min", "minute", "minutes", "h", "hour",
          "hours", "d", "day", "days")
LIMIT_SYNTAX = (f"^{_SPACE}[0-9]+{_SPACE}/{_SPACE}[0-9]*{_SPACE}"
                f"({'|'.join(_any_case(unit) for unit in _UNITS)}){_SPACE}$")
LIMIT = {"type": "string", "maxLength": 64, "pattern": LIMIT_SYNTAX,
         "description": "<count>/<window>, e.g. 100/s, 5000/h, 10/5m (units ms, s, m, h, d "
                        "or their names); the count from 1 to 1,000,000,000 (at most 100,000 "
                        "with sliding_log), the window from 100 ms to 366 days",
         "examples": ["100/s"]}
NULL_NUM = {"type": ["number", "null"]}
# validate.api's rules for an API's host (lowercased by the server) and prefix; a header
# name of RFC 9110 that the proxy does not set itself (compared in any case).
HOST_NAME = ("^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
             "(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
PREFIX = ("^(?!.*\\.\\.)(?!.*//)(?!.*/\\.(/|;|%3[Bb]|$))"
          "(?!.*%(2[05EeFf]|5[Cc]|[0189A-Fa-f]))/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
RESERVED_HEADERS = tuple(sorted(_RESERVED_HEADERS))
HEADER_NAME = ("^(?!(" + "|".join(_any_case(name) for name in RESERVED_HEADERS) + ")$)"
               "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
# An http(s) URL with a named host, an optional port and a path of visible ASCII.
HTTP_URL = {"type": "string", "maxLength": 2000,
            "pattern": "^https?://[A-Za-z][A-Za-z0-9-]*(\\.[A-Za-z0-9-]+)*(:[1-9][0-9]{0,3})?"
                       "(/[!-~]*)?$"}

COMPONENTS = {
    "Error": obj({
        "error": {"type": "string", "description": "machine-readable code"},
        "message": {"type": "string", "description": "for people"},
        "field": {"type": "string", "description": "the offending field (422)"},
    }, ["error", "message"]),
    "User": obj({"id": ID, "email": STR, "name": STR, "created_at": TIME}),
    "Workspace": obj({"id": ID, "name": STR, "created_at": TIME, "role": ROLE}, ["id", "name", "created_at"]),
    "Session": obj({
        "access_token": STR, "refresh_token": STR,
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer", "description": "seconds the access token lives"},
        "user": ref("User"),
        "workspace": ref("Workspace"),
    }, ["access_token", "refresh_token", "token_type", "expires_in", "user"]),
    "Me": obj({"user": ref("User"), "workspaces": {"type": "array", "items": ref("Workspace")}}),
    "Member": obj({"user_id": ID, "email": STR, "name": STR, "role": ROLE, "created_at": TIME}),
    "Invitation": obj({
        "id": ID, "workspace_id": ID, "email": STR, "role": ROLE, "created_at": TIME,
        "expires_at": TIME, "accepted_at": NULL_TIME, "revoked_at": NULL_TIME,
        "token": {"type": "string", "description": "shown once, at creation"},
    }, ["id", "workspace_id", "email", "role", "created_at", "expires_at", "accepted_at",
        "revoked_at"]),
    "Policy": obj({
        "id": ID, "workspace_id": ID, "name": STR,
        "limits": {"type": "array", "items": LIMIT, "minItems": 1},
        "scope": {"type": "string", "enum": list(SCOPES)},
        "mode": {"type": "string", "enum": list(MODES)},
        "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
        "failure_mode": {"type": "string", "enum": list(FAILURE_MODES)},
        "created_at": TIME, "updated_at": TIME,
    }),
    "Api": obj({
        "id": ID, "workspace_id": ID, "name": STR,
        "host": {"type": ["string", "null"]}, "prefix": STR, "upstream_url": STR,
        "strip_prefix": {"type": "boolean"}, "policy_id": NULL_ID,
        "timeout_seconds": NULL_NUM, "max_body_bytes": {"type": ["integer", "null"]},
        "upstream_header_names": {
            "type": "array", "items": STR,
            "description": "headers injected upstream; their values are stored encrypted "
                           "and never returned"},
        "created_at": TIME, "updated_at": TIME,
    }),
    "Key": obj({
        "id": ID, "workspace_id": ID, "name": STR,
        "prefix": {"type": "string", "description": "the first 8 characters of the key"},
        "last_four": STR, "policy_id": NULL_ID, "expires_at": NULL_TIME,
        "revoked_at": NULL_TIME, "created_at": TIME, "created_by": NULL_ID,
        "last_used_at": NULL_TIME, "replaced_by": NULL_ID,
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "key": {"type": "string", "description": "the plaintext key, only in the answer "
                                                 "that creates it"},
    }, ["id", "workspace_id", "name", "prefix", "last_four", "policy_id", "expires_at",
        "revoked_at", "created_at", "created_by", "last_used_at", "replaced_by", "status"]),
    "KeyRoll": obj({"key": ref("Key"), "previous": ref("Key")}),
    "AuditEntry": obj({
        "id": {"type": "integer"}, "actor_id": NULL_ID, "actor": STR, "action": STR,
        "target_type": STR, "target_id": STR, "detail": {"type": "object"}, "created_at": TIME,
    }),
    "RequestsOverTime": obj({
        "from": TIME, "to": TIME, "step_seconds": {"type": "integer"},
        "buckets": {"type": "array", "items": obj({
            "ts": TIME, "total": INT, "1xx": INT, "2xx": INT, "3xx": INT, "4xx": INT,
            "5xx": INT})},
    }),
    "Latency": obj({
        "from": TIME, "to": TIME, "step_seconds": {"type": "integer"},
        "p50": NULL_NUM, "p95": NULL_NUM, "p99": NULL_NUM,
        "buckets": {"type": "array", "items": obj({
            "ts": TIME, "p50": {"type": "number"}, "p95": {"type": "number"},
            "p99": {"type": "number"}})},
    }),
    "Decisions": obj({
        "from": TIME, "to": TIME, "total": INT, "allowed": INT, "limited": INT,
        "shadow_limited": INT, "unauthorized": INT, "error": INT,
    }),
    "TopKeys": obj({
        "from": TIME, "to": TIME,
        "items": {"type": "array", "items": obj({
            "key_id": STR, "name": {"type": ["string", "null"]},
            "prefix": {"type": ["string", "null"]}, "requests": INT, "limited": INT,
            "errors": INT})},
    }),
    "TopPaths": obj({
        "from": TIME, "to": TIME,
        "items": {"type": "array", "items": obj({
            "api_id": STR, "path": STR, "requests": INT, "errors": INT,
            "p95_ms": {"type": "number"}})},
    }),
}
for _name in ("Workspace", "Member", "Invitation", "Policy", "Api", "Key", "AuditEntry"):
    COMPONENTS[_name + "List"] = items_of(_name)

# -- request bodies -------------------------------------------------------------------------

SIGNUP = obj({
    "email": {"type": "string", "format": "email", "maxLength": 254},
    "password": {"type": "string", "minLength": 8, "maxLength": 256},
    "name": {"type": "string", "maxLength": 100, "pattern": PRINTABLE},
    "workspace_name": NAME,
    "invitation": {"type": ["string", "null"], "maxLength": 200,
                   "description": "an invitation token: join its workspace instead of "
                                  "creating one (null or absent: a new workspace)"},
}, ["email", "password"])
LOGIN = obj({"email": {"type": "string", "minLength": 1, "maxLength": 256},
             "password": {"type": "string", "minLength": 1, "maxLength": 256}})
TOKEN = {"type": "string", "minLength": 1, "maxLength": 200}
REFRESH = obj({"refresh_token": TOKEN})
ACCEPT = obj({"token": TOKEN})
WORKSPACE_IN = obj({"name": NAME})
ROLE_IN = obj({"role": ROLE})
INVITATION_IN = obj({"email": {"type": "string", "format": "email", "maxLength": 254},
                     "role": ROLE})
_POLICY_PROPS = {
    "name": NAME,
    "limits": {"type": "array", "items": LIMIT, "minItems": 1, "maxItems": 10,
               "description": "all must admit a request; no two limits may share a window"},
    "scope": {"type": "string", "enum": list(SCOPES), "default": "key"},
    "mode": {"type": "string", "enum": list(MODES), "default": "enforce"},
    "algorithm": {"type": "string", "enum": list(ALGORITHMS), "default": "sliding_window"},
    "failure_mode": {"type": "string", "enum": list(FAILURE_MODES), "default": "open"},
}
POLICY_IN = obj(_POLICY_PROPS, ["name", "limits"])
POLICY_PATCH = obj(_POLICY_PROPS, [])
_API_PROPS = {
    "name": NAME,
    "host": {"type": ["string", "null"], "maxLength": 253, "pattern": HOST_NAME,
             "description": "a host name such as api.example.com (any case); null: any host"},
    "prefix": {"type": "string", "maxLength": 200, "pattern": PREFIX,
               "description": "a path such as /orders: no '//', no '..', no '.' segment "
                              "(also before ';'), percent-encoding only of visible ASCII "
                              "but '.', '/', '\\' and '%' (the proxy refuses paths that "
                              "could hide a dot segment, so the route could never match)"},
    "upstream_url": {**HTTP_URL, "description": "http(s)://host[:port][/path]"},
    "strip_prefix": {"type": "boolean", "default": True},
    "policy_id": NULL_ID,
    "timeout_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 3600},
    "max_body_bytes": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**40},
    "upstream_headers": {
        "type": "object", "maxProperties": 20,
        "propertyNames": {"pattern": HEADER_NAME},
        "additionalProperties": {"type": "string", "maxLength": 8192, "pattern": PRINTABLE},
        "description": "credentials the proxy adds to every upstream request; stored "
                       "encrypted (ENCRYPTION_KEY), never returned; replaces all on update. "
                       "Header names as in HTTP, each at most once in any case, none the "
                       "proxy sets itself (" + ", ".join(sorted(RESERVED_HEADERS)) + "); "
                       "values printable"},
}
API_IN = obj(_API_PROPS, ["name", "prefix", "upstream_url"])
API_PATCH = obj(_API_PROPS, [])
KEY_IN = obj({"name": NAME, "policy_id": NULL_ID, "expires_at": {
    **NULL_TIME, "description": "must be in the future, at most 9999-12-31T23:59:59Z"}},
    ["name"])
ROLL_IN = obj({"overlap_seconds": {
    "type": "integer", "minimum": 0, "maximum": 30 * 86400, "default": 3600,
    "description": "how long the old key keeps working (0: stops at once)"}}, [])
