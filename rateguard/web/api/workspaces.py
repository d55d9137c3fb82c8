"""Workspaces, their members and roles, invitations, and the audit log."""

from __future__ import annotations

from rateguard.db import validate
from rateguard.db.errors import Forbidden
from rateguard.db.repository import ROLE_RANK
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import Ctx, Param, op

LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
              "at most this many entries")
BEFORE = Param("before", {"type": "integer", "minimum": 1, "maximum": 2**62},
               "only entries with a smaller id (the next page)")


@op("GET", "/workspaces", summary="The workspaces the caller belongs to, with their role.",
    tag="workspaces", access="user", response=s.ref("WorkspaceList"))
async def list_workspaces(ctx: Ctx):
    return {"items": await ctx.repo.list_workspaces(ctx.user["id"])}


@op("POST", "/workspaces", summary="Create a workspace; the caller owns it.",
    tag="workspaces", access="user", status=201, request=s.WORKSPACE_IN,
    response=s.ref("Workspace"), errors=(400, 422))
async def create_workspace(ctx: Ctx):
    body = validate.body_object(ctx.body, {"name"}, {"name"})
    return await ctx.repo.create_workspace(ctx.actor, validate.text(body, "name"))


@op("GET", "/workspaces/{workspace_id}", summary="One workspace.", tag="workspaces",
    response=s.ref("Workspace"))
async def get_workspace(ctx: Ctx):
    return await ctx.repo.get_workspace(ctx.workspace_id, ctx.role)


@op("PATCH", "/workspaces/{workspace_id}", summary="Rename a workspace.", tag="workspaces",
    access="admin", request=s.WORKSPACE_IN, response=s.ref("Workspace"), errors=(400, 422))
async def update_workspace(ctx: Ctx):
    body = validate.body_object(ctx.body, {"name"}, {"name"})
    return await ctx.repo.rename_workspace(ctx.actor, ctx.workspace_id,
                                           validate.text(body, "name"), ctx.role)


@op("GET", "/workspaces/{workspace_id}/members", summary="Members and their roles.",
    tag="members", response=s.ref("MemberList"))
async def list_members(ctx: Ctx):
    return {"items": await ctx.repo.list_members(ctx.workspace_id)}


@op("PATCH", "/workspaces/{workspace_id}/members/{user_id}", summary="Change a member's "
    "role (only an owner grants or takes away 'owner'; a workspace keeps one owner).",
    tag="members", access="admin", request=s.ROLE_IN, response=s.ref("Member"),
    errors=(400, 409, 422))
async def update_member(ctx: Ctx):
    body = validate.body_object(ctx.body, {"role"}, {"role"})
    role = validate.choice(body, "role", validate.ROLES)
    return await ctx.repo.set_member_role(ctx.actor, ctx.role, ctx.workspace_id,
                                          ctx.path("user_id"), role)


@op("DELETE", "/workspaces/{workspace_id}/members/{user_id}", summary="Remove a member "
    "(admins remove others; anyone may leave).", tag="members", status=204, errors=(409,))
async def remove_member(ctx: Ctx):
    user_id = ctx.path("user_id")
    if user_id != ctx.user["id"] and ROLE_RANK[ctx.role] < ROLE_RANK["admin"]:
        raise Forbidden("this needs the admin role in the workspace; you are viewer")
    await ctx.repo.remove_member(ctx.actor, ctx.role, ctx.workspace_id, user_id)


@op("GET", "/workspaces/{workspace_id}/invitations", summary="Invitations sent.",
    tag="members", access="admin", response=s.ref("InvitationList"))
async def list_invitations(ctx: Ctx):
    return {"items": await ctx.repo.list_invitations(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/invitations", summary="Invite someone by email; "
    "the answer carries the invitation token, once.", tag="members", access="admin",
    status=201, request=s.INVITATION_IN, response=s.ref("Invitation"), errors=(400, 422))
async def create_invitation(ctx: Ctx):
    body = validate.body_object(ctx.body, {"email", "role"}, {"email", "role"})
    return await ctx.repo.create_invitation(
        ctx.actor, ctx.role, ctx.workspace_id, validate.email(body),
        validate.choice(body, "role", validate.ROLES))


@op("DELETE", "/workspaces/{workspace_id}/invitations/{invitation_id}",
    summary="Withdraw a pending invitation.", tag="members", access="admin", status=204)
async def revoke_invitation(ctx: Ctx):
    await ctx.repo.revoke_invitation(ctx.actor, ctx.workspace_id, ctx.path("invitation_id"))


@op("GET", "/workspaces/{workspace_id}/audit", summary="Who changed what, newest first.",
    tag="audit", query=(LIMIT, BEFORE), response=s.ref("AuditEntryList"), errors=(422,))
async def list_audit(ctx: Ctx):
    limit = ctx.query_int("limit", 100, 1, 1000)
    before = ctx.query_int("before", 0, 1, 2**62) if "before" in ctx.request.query else None
    return {"items": await ctx.repo.list_audit(ctx.workspace_id, limit, before)}
