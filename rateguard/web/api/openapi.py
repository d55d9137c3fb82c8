"""The OpenAPI 3.1 document of the management API, built from the operation table."""

from __future__ import annotations

import re

from aiohttp import web

from rateguard import __version__
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import OPERATIONS, PREFIX, json_response

PATH_PARAM = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
REASONS = {400: "Malformed request (not JSON, or no body)",
           401: "No valid access token", 403: "The caller's role does not allow this",
           404: "Not found (or in a workspace the caller does not belong to)",
           409: "Conflicts with existing data, or an id in the body names nothing in "
                "the workspace ('field' names it)", 422: "A field is invalid; 'field' names it",
           429: "Too many attempts; Retry-After says when to try again",
           503: "A backing service is unavailable"}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": s.ref("Error")}}}


def _no_nul(schema):
    """A copy of a request schema in which every string without a pattern of its own
    refuses NUL, as the server does anywhere in a body or query (PostgreSQL text cannot
    hold one): registry._check_values and Ctx.query_str."""
    if isinstance(schema, list):
        return [_no_nul(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "dependentSchemas", "$defs"):
            out[key] = {name: _no_nul(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "propertyNames", "not", "if", "then",
                     "else", "contains", "oneOf", "anyOf", "allOf"):
            out[key] = _no_nul(value)
        else:
            out[key] = value
    types = out.get("type")
    if ("string" == types or (isinstance(types, list) and "string" in types)) \
            and "pattern" not in out and "enum" not in out and "const" not in out:
        out["pattern"] = s.NO_NUL
    return out


def build() -> dict:
    paths: dict[str, dict] = {}
    for operation in OPERATIONS:
        item = paths.setdefault(PREFIX + operation.path, {})
        parameters = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAM}
                      for name in re.findall(r"\{(\w+)\}", operation.path)]
        parameters += [{"name": p.name, "in": "query", "required": p.required,
                        "schema": _no_nul(p.schema), "description": p.description}
                       for p in operation.query]
        statuses = set(operation.errors)
        if operation.access != "public":
            statuses.add(401)
        if operation.in_workspace:
            statuses.add(404)
            if operation.access in ("admin", "owner") or operation.method == "DELETE":
                statuses.add(403)
        if operation.request is not None:
            statuses |= {400, 422}
        responses: dict[str, dict] = {}
        if operation.status == 204:
            responses["204"] = {"description": "Done"}
        else:
            responses[str(operation.status)] = {
                "description": "OK" if operation.status == 200 else "Created",
                "content": {"application/json": {"schema": operation.response}}}
        for status in sorted(statuses):
            responses[str(status)] = _error(REASONS[status])
        entry = {"operationId": operation.operation_id, "summary": operation.summary,
                 "tags": [operation.tag], "responses": responses}
        if parameters:
            entry["parameters"] = parameters
        if operation.request is not None:
            entry["requestBody"] = {
                "required": operation.request_required,
                "content": {"application/json": {"schema": _no_nul(operation.request)}}}
        entry["security"] = [] if operation.access == "public" else [{"bearer": []}]
        if operation.in_workspace:
            entry["description"] = f"Needs the '{operation.access}' role or higher."
        item[operation.method.lower()] = entry
    paths[PREFIX + "/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document.", "tags": ["meta"],
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "RateGuard management API", "version": __version__,
                 "description": "Accounts, workspaces, APIs, rate-limit policies, API keys, "
                                "usage analytics and the audit log. Errors are JSON "
                                "{\"error\": code, \"message\": text}."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": s.COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }


_DOCUMENT: dict | None = None


async def openapi_handler(request: web.Request) -> web.Response:
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = build()
    return json_response(_DOCUMENT)
