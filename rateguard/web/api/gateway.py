"""What the proxies serve: policies, APIs and API keys. Every change is announced to
the running proxies (NOTIFY) in the transaction that makes it."""

from __future__ import annotations

from rateguard.web.api import schemas as s
from rateguard.web.api.registry import Ctx, op

WRITE = (400, 409, 422)


@op("GET", "/workspaces/{workspace_id}/policies", summary="Rate-limit policies.",
    tag="policies", response=s.ref("PolicyList"))
async def list_policies(ctx: Ctx):
    return {"items": await ctx.repo.list_policies(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/policies", summary="Create a policy: one or more "
    "limits that must all admit a request.", tag="policies", access="admin", status=201,
    request=s.POLICY_IN, response=s.ref("Policy"), errors=WRITE)
async def create_policy(ctx: Ctx):
    return await ctx.repo.create_policy(ctx.actor, ctx.workspace_id, ctx.body)


@op("GET", "/workspaces/{workspace_id}/policies/{policy_id}", summary="One policy.",
    tag="policies", response=s.ref("Policy"))
async def get_policy(ctx: Ctx):
    return await ctx.repo.get_policy(ctx.workspace_id, ctx.path("policy_id"))


@op("PATCH", "/workspaces/{workspace_id}/policies/{policy_id}", summary="Change a policy; "
    "every proxy applies it within seconds.", tag="policies", access="admin",
    request=s.POLICY_PATCH, response=s.ref("Policy"), errors=WRITE)
async def update_policy(ctx: Ctx):
    return await ctx.repo.update_policy(ctx.actor, ctx.workspace_id, ctx.path("policy_id"),
                                        ctx.body)


@op("DELETE", "/workspaces/{workspace_id}/policies/{policy_id}", summary="Delete a policy "
    "no API or active key uses.", tag="policies", access="admin", status=204, errors=(409,))
async def delete_policy(ctx: Ctx):
    await ctx.repo.delete_policy(ctx.actor, ctx.workspace_id, ctx.path("policy_id"))


@op("GET", "/workspaces/{workspace_id}/apis", summary="APIs (routes to upstreams).",
    tag="apis", response=s.ref("ApiList"))
async def list_apis(ctx: Ctx):
    return {"items": await ctx.repo.list_apis(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/apis", summary="Create an API: requests to host + "
    "prefix go to the upstream.", tag="apis", access="admin", status=201, request=s.API_IN,
    response=s.ref("Api"), errors=WRITE)
async def create_api(ctx: Ctx):
    return await ctx.repo.create_api(ctx.actor, ctx.workspace_id, ctx.body)


@op("GET", "/workspaces/{workspace_id}/apis/{api_id}", summary="One API.", tag="apis",
    response=s.ref("Api"))
async def get_api(ctx: Ctx):
    return await ctx.repo.get_api(ctx.workspace_id, ctx.path("api_id"))


@op("PATCH", "/workspaces/{workspace_id}/apis/{api_id}", summary="Change an API.",
    tag="apis", access="admin", request=s.API_PATCH, response=s.ref("Api"), errors=WRITE)
async def update_api(ctx: Ctx):
    return await ctx.repo.update_api(ctx.actor, ctx.workspace_id, ctx.path("api_id"), ctx.body)


@op("DELETE", "/workspaces/{workspace_id}/apis/{api_id}", summary="Delete an API.",
    tag="apis", access="admin", status=204)
async def delete_api(ctx: Ctx):
    await ctx.repo.delete_api(ctx.actor, ctx.workspace_id, ctx.path("api_id"))


@op("GET", "/workspaces/{workspace_id}/keys", summary="API keys, newest first: prefix, "
    "last four, status, last used, expiry (never the key itself).", tag="keys",
    response=s.ref("KeyList"))
async def list_keys(ctx: Ctx):
    return {"items": await ctx.repo.list_keys(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/keys", summary="Create an API key. The answer's "
    "'key' is the plaintext, shown this once; only its SHA-256 is stored.", tag="keys",
    access="admin", status=201, request=s.KEY_IN, response=s.ref("Key"), errors=WRITE)
async def create_key(ctx: Ctx):
    return await ctx.repo.create_key(ctx.actor, ctx.workspace_id, ctx.body)


@op("GET", "/workspaces/{workspace_id}/keys/{key_id}", summary="One API key.", tag="keys",
    response=s.ref("Key"))
async def get_key(ctx: Ctx):
    return await ctx.repo.get_key(ctx.workspace_id, ctx.path("key_id"))


@op("POST", "/workspaces/{workspace_id}/keys/{key_id}/revoke", summary="Revoke a key: every "
    "proxy answers 401 for it within two seconds.", tag="keys", access="admin",
    response=s.ref("Key"))
async def revoke_key(ctx: Ctx):
    return await ctx.repo.revoke_key(ctx.actor, ctx.workspace_id, ctx.path("key_id"))


@op("POST", "/workspaces/{workspace_id}/keys/{key_id}/roll", summary="Replace a key with a "
    "new one (same name, policy and expiry); the old one keeps working for "
    "overlap_seconds.", tag="keys", access="admin", status=201, request=s.ROLL_IN,
    request_required=False, response=s.ref("KeyRoll"), errors=WRITE)
async def roll_key(ctx: Ctx):
    return await ctx.repo.roll_key(ctx.actor, ctx.workspace_id, ctx.path("key_id"), ctx.body)
