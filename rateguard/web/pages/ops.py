"""Pages call the management API's own operations (web/api/*), in process.

An operation is looked up in the table the router is built from and its handler is run
with a :class:`Ctx` made from the page's request and the signed-in user, after the same
role check the API applies. Validation, auditing and NOTIFY to the proxies therefore
happen exactly as for an API call; the pages hold no business logic of their own.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from rateguard.db.errors import Forbidden
from rateguard.db.repository import ROLE_RANK
from rateguard.web.api.registry import OPERATIONS, REPO, Ctx, Operation


def find(operation_id: str) -> Operation | None:
    for operation in OPERATIONS:
        if operation.operation_id == operation_id:
            return operation
    return None


def available(operation_id: str) -> bool:
    return find(operation_id) is not None


def allowed(role: str | None, operation_id: str) -> bool:
    operation = find(operation_id)
    if operation is None:
        return False
    if operation.access not in ROLE_RANK:
        return True
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[operation.access]


async def call(request: web.Request, operation_id: str, *, user: dict | None = None,
               session_id: str | None = None, role: str | None = None, body: Any = None,
               query: dict | None = None) -> Any:
    """Run one operation as the signed-in user. The page's route names its path
    parameters as the operation does; ``query`` replaces the query string."""
    operation = find(operation_id)
    if operation is None:
        raise web.HTTPNotFound()
    if operation.in_workspace and operation.access in ROLE_RANK and (
            role is None or ROLE_RANK[role] < ROLE_RANK[operation.access]):
        raise Forbidden(f"this needs the {operation.access} role in the workspace; "
                        f"you are {role}")
    if query is not None:
        request = _WithQuery(request, query)
    ctx = Ctx(request, request.app[REPO], user=user, session_id=session_id, role=role,
              body=body)
    return await operation.handler(ctx)



class _WithQuery:
    """The page's request as an operation sees it: the same app, path parameters and
    headers, with the query string the page chose (a request whose form body was read
    cannot be cloned)."""

    def __init__(self, request: web.Request, query: dict) -> None:
        self._request = request
        self.query = MultiDictProxy(MultiDict(
            {k: str(v) for k, v in query.items() if v is not None}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)
