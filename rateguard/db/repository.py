"""Every control-plane query, and the operations built from them.

The management API, the CLI (`rateguard keys create`, `users create`) and the demo seed
all go through :class:`Repository`, so a key made from the command line is validated,
audited and announced exactly like one made through the API. Each change runs in one
transaction with its audit entry and a ``NOTIFY`` on :data:`CHANNEL`; PostgreSQL
delivers the notification only on commit, so a proxy never reloads a half-made change.

Every workspace-owned row is read and written with ``workspace_id = $1`` in the query:
an id from another workspace is simply not found.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from rateguard.crypto import KeyRing
from rateguard.db import validate
from rateguard.db.connection import CHANNEL
from rateguard.db.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from rateguard.net.egress import ALWAYS, EgressPolicy
from rateguard.snapshot.keys import hash_key, new_key

log = logging.getLogger(__name__)

REFRESH_TTL = timedelta(days=30)
INVITATION_TTL = timedelta(days=7)
RESET_TTL = timedelta(hours=1)
ROLE_RANK = {"viewer": 0, "admin": 1, "owner": 2}


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def header_aad(api_id: str, name: str) -> str:
    """What an upstream header value is bound to when encrypted."""
    return f"api:{api_id}:header:{name.lower()}"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, for the audit log: a user, or the command line."""

    user_id: str | None
    label: str

    @classmethod
    def cli(cls) -> "Actor":
        return cls(None, "cli")


# -- row shapes returned to callers -------------------------------------------------------

def user_out(row) -> dict:
    return {"id": row["id"], "email": row["email"], "name": row["name"],
            "created_at": row["created_at"]}


def admin_user_out(row) -> dict:
    """A user as an operator sees them (never the password hash)."""
    out = {**user_out(row), "disabled_at": row["disabled_at"],
           "operator": row["operator"]}
    if "sessions" in row.keys():
        out["sessions"] = row["sessions"]
    return out


def session_out(row, current: str | None = None) -> dict:
    return {"id": row["id"], "created_at": row["created_at"],
            "last_used_at": row["last_used_at"], "expires_at": row["expires_at"],
            "user_agent": row["user_agent"], "client_ip": row["client_ip"],
            "current": row["id"] == current}


def workspace_out(row, role: str | None = None) -> dict:
    out = {"id": row["id"], "name": row["name"], "created_at": row["created_at"]}
    if role is not None:
        out["role"] = role
    return out


def policy_out(row) -> dict:
    return {"id": row["id"], "workspace_id": row["workspace_id"], "name": row["name"],
            "limits": list(row["limits"]), "scope": row["scope"], "mode": row["mode"],
            "algorithm": row["algorithm"], "failure_mode": row["failure_mode"],
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def api_out(row) -> dict:
    return {"id": row["id"], "workspace_id": row["workspace_id"], "name": row["name"],
            "host": row["host"], "prefix": row["prefix"], "upstream_url": row["upstream_url"],
            "strip_prefix": row["strip_prefix"], "policy_id": row["policy_id"],
            "timeout_seconds": row["timeout_seconds"], "max_body_bytes": row["max_body_bytes"],
            "upstream_header_names": sorted(row["upstream_headers"] or {}),
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def key_status(row, now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


def key_out(row, now: datetime | None = None) -> dict:
    return {"id": row["id"], "workspace_id": row["workspace_id"], "name": row["name"],
            "prefix": row["prefix"], "last_four": row["last_four"],
            "policy_id": row["policy_id"], "expires_at": row["expires_at"],
            "revoked_at": row["revoked_at"], "created_at": row["created_at"],
            "created_by": row["created_by"], "last_used_at": row["last_used_at"],
            "replaced_by": row["replaced_by"], "status": key_status(row, now or utcnow())}


def member_out(row) -> dict:
    return {"user_id": row["user_id"], "email": row["email"], "name": row["name"],
            "role": row["role"], "created_at": row["created_at"]}


def invitation_out(row) -> dict:
    return {"id": row["id"], "workspace_id": row["workspace_id"], "email": row["email"],
            "role": row["role"], "created_at": row["created_at"],
            "expires_at": row["expires_at"], "accepted_at": row["accepted_at"],
            "revoked_at": row["revoked_at"]}


def audit_out(row) -> dict:
    return {"id": row["id"], "actor_id": row["actor_id"], "actor": row["actor"],
            "action": row["action"], "target_type": row["target_type"],
            "target_id": row["target_id"], "detail": row["detail"],
            "created_at": row["created_at"]}


# -- route ownership (README "Security") -----------------------------------------------
# Every change to who routes where runs under this transaction lock, so two workspaces
# never both pass the checks below at once.
ROUTES_LOCK = int.from_bytes(hashlib.sha256(b"rateguard routes").digest()[:8], "big") >> 1
ANY_HOST = "*"  # route_hosts row for the any-host routes
HOST_NOT_ASSIGNED = ("host: this host is not assigned to this workspace; an operator "
                     "assigns hosts with `rateguard hosts assign HOST WORKSPACE`")
ANY_HOST_RESERVED = ("host: routes for any host are reserved to another workspace on this "
                     "instance; use a host assigned to this workspace")
ROUTE_TAKEN = ("prefix: this path is already routed by another workspace (a prefix may "
               "not be equal to, inside or above one of another workspace's any-host "
               "prefixes); choose another prefix or a host assigned to this workspace")
# Another workspace's any-host prefix equal to, above or below $2.
_OVERLAPPING_ANY_HOST = (
    "SELECT 1 FROM apis WHERE host IS NULL AND workspace_id <> $1 AND (prefix = $2"
    " OR prefix = '/' OR $2 = '/' OR starts_with($2, prefix || '/')"
    " OR starts_with(prefix, $2 || '/')) LIMIT 1")


def host_owner_out(row) -> dict:
    return {"host": row["host"], "workspace_id": row["workspace_id"],
            "assigned_at": row["assigned_at"]}


class Repository:
    def __init__(self, pool: asyncpg.Pool, keyring: KeyRing | None = None,
                 hasher: PasswordHasher | None = None,
                 egress: EgressPolicy = ALWAYS) -> None:
        self.pool = pool
        self.keyring = keyring
        # the one egress policy (rateguard/net/egress.py), from Settings: upstream URLs
        # and alert destinations are refused here exactly as at connect time
        self.egress = egress
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None

    # -- helpers ------------------------------------------------------------------------

    async def _audit(self, conn, workspace_id: str | None, actor: Actor, action: str,
                     target_type: str, target_id: str, detail: dict | None = None) -> None:
        await conn.execute(
            "INSERT INTO audit_log (workspace_id, actor_id, actor, action, target_type,"
            " target_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            workspace_id, actor.user_id, actor.label, action, target_type, target_id,
            detail or {})

    @staticmethod
    async def _notify(conn, workspace_id: str, kind: str, target_id: str) -> None:
        payload = orjson.dumps({"workspace_id": workspace_id, "kind": kind,
                                "id": target_id}).decode()
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    async def _hash_password(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify_password(self, stored: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False
        return await asyncio.to_thread(check)

    # -- users and sessions -------------------------------------------------------------

    async def _insert_user(self, conn, email: str, password: str, name: str) -> Any:
        password_hash = await self._hash_password(password)
        try:
            return await conn.fetchrow(
                "INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)"
                " RETURNING *", new_id("usr"), email, name, password_hash)
        except asyncpg.UniqueViolationError:
            raise Conflict("email: an account with this email already exists", "email") from None

    async def signup(self, email: str, password: str, name: str = "",
                     workspace_name: str | None = None,
                     invitation: str | None = None) -> tuple[dict, dict, str]:
        """A new user. With an invitation token they join that workspace; otherwise
        they own a new one. Returns (user, workspace, role)."""
        async with self.pool.acquire() as conn, conn.transaction():
            user = await self._insert_user(conn, email, password, name)
            actor = Actor(user["id"], user["email"])
            if invitation:
                workspace, role = await self._accept(conn, user, invitation)
            else:
                workspace = await self._create_workspace(
                    conn, actor, workspace_name or f"{name or email.split('@')[0]}'s workspace")
                role = "owner"
            await self._audit(conn, workspace["id"], actor, "user.signup", "user", user["id"])
        return user_out(user), workspace_out(workspace, role), role

    async def create_user(self, email: str, password: str, name: str = "",
                          workspace_id: str | None = None, role: str = "viewer",
                          actor: Actor | None = None) -> dict:
        """An operator-made user (`rateguard users create`), optionally added to a
        workspace, or owning a new one when workspace_id is "new"."""
        actor = actor or Actor.cli()
        async with self.pool.acquire() as conn, conn.transaction():
            user = await self._insert_user(conn, email, password, name)
            out = user_out(user)
            if workspace_id == "new":
                workspace = await self._create_workspace(
                    conn, Actor(user["id"], user["email"]), f"{name or email}'s workspace")
                out["workspace"] = workspace_out(workspace, "owner")
            elif workspace_id:
                if not await conn.fetchval("SELECT 1 FROM workspaces WHERE id = $1",
                                           workspace_id):
                    raise NotFound(f"workspace {workspace_id} not found")
                await conn.execute("INSERT INTO memberships (workspace_id, user_id, role)"
                                   " VALUES ($1, $2, $3)", workspace_id, user["id"], role)
                out["workspace"] = {"id": workspace_id, "role": role}
            await self._audit(conn, out.get("workspace", {}).get("id"), actor, "user.create",
                              "user", user["id"], {"email": email})
        return out

    async def authenticate(self, email: str, password: str) -> dict:
        row = await self.pool.fetchrow(
            "SELECT * FROM users WHERE lower(email) = lower($1) AND disabled_at IS NULL", email)
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash_password(secrets.token_hex(8))
            await self._verify_password(self._dummy_hash, password)  # same time either way
            raise Unauthorized("wrong email or password")
        if not await self._verify_password(row["password_hash"], password):
            raise Unauthorized("wrong email or password")
        if self.hasher.check_needs_rehash(row["password_hash"]):
            await self.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1",
                                    row["id"], await self._hash_password(password))
        return user_out(row)

    async def create_session(self, user_id: str, user_agent: str = "",
                             client_ip: str = "") -> tuple[str, str]:
        """(session id, refresh token)."""
        session_id, refresh = new_id("ses"), "rgr_" + secrets.token_urlsafe(32)
        await self.pool.execute(
            "INSERT INTO sessions (id, user_id, refresh_hash, expires_at, user_agent,"
            " client_ip) VALUES ($1, $2, $3, $4, $5, $6)", session_id, user_id,
            _sha256(refresh), utcnow() + REFRESH_TTL, (user_agent or "")[:300],
            (client_ip or "")[:64])
        # spent refresh tokens matter only while their session can still be refreshed
        await self.pool.execute("DELETE FROM spent_refresh_tokens WHERE spent_at < $1",
                                utcnow() - REFRESH_TTL - timedelta(days=1))
        return session_id, refresh

    async def refresh_session(self, refresh: str) -> tuple[str, str, str]:
        """Rotate a refresh token: (user id, session id, new refresh token). A token
        already traded in and presented again was copied: its session is ended (the
        thief and the owner are both signed out) and the call is refused."""
        new_refresh = "rgr_" + secrets.token_urlsafe(32)
        old_hash = _sha256(refresh)
        reused = None
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE sessions s SET refresh_hash = $2, last_used_at = now() FROM users u"
                " WHERE s.refresh_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()"
                " AND u.id = s.user_id AND u.disabled_at IS NULL"
                " RETURNING s.id, s.user_id", old_hash, _sha256(new_refresh))
            if row is not None:
                await conn.execute(
                    "INSERT INTO spent_refresh_tokens (refresh_hash, session_id)"
                    " VALUES ($1, $2) ON CONFLICT DO NOTHING", old_hash, row["id"])
            else:
                reused = await conn.fetchrow(
                    "UPDATE sessions s SET revoked_at = now(), ended_reason = 'refresh_reuse'"
                    " FROM spent_refresh_tokens t WHERE t.refresh_hash = $1"
                    " AND s.id = t.session_id AND s.revoked_at IS NULL"
                    " RETURNING s.id, s.user_id", old_hash)
        if row is None:
            if reused is not None:
                log.warning("refresh token reused: session %s of user %s ended (the token "
                            "was copied)", reused["id"], reused["user_id"])
            raise Unauthorized("refresh token is invalid, expired or revoked")
        return row["user_id"], row["id"], new_refresh

    async def revoke_session(self, session_id: str, reason: str = "signed_out") -> None:
        await self.pool.execute(
            "UPDATE sessions SET revoked_at = now(), ended_reason = $2"
            " WHERE id = $1 AND revoked_at IS NULL", session_id, reason)

    async def session_user(self, session_id: str, user_id: str) -> dict | None:
        row = await self.pool.fetchrow(
            "SELECT u.* FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL"
            " AND s.expires_at > now() AND u.disabled_at IS NULL", session_id, user_id)
        return user_out(row) if row else None

    # -- recovering an account: sessions, passwords, disabled users (README "Security") --

    async def list_sessions(self, user_id: str, current: str | None = None) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT * FROM sessions WHERE user_id = $1 AND revoked_at IS NULL"
            " AND expires_at > now() ORDER BY created_at DESC, id", user_id)
        return [session_out(r, current) for r in rows]

    async def end_session(self, user_id: str, session_id: str) -> None:
        """End one of the user's own sessions (404 for anyone else's)."""
        ended = await self.pool.fetchval(
            "UPDATE sessions SET revoked_at = now(), ended_reason = 'ended_by_user'"
            " WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING id",
            session_id, user_id)
        if ended is None:
            raise NotFound("session not found or already ended")

    @staticmethod
    async def _end_sessions(conn, user_id: str, reason: str, keep: str | None = None) -> int:
        rows = await conn.fetch(
            "UPDATE sessions SET revoked_at = now(), ended_reason = $2 WHERE user_id = $1"
            " AND revoked_at IS NULL AND ($3::text IS NULL OR id <> $3) RETURNING id",
            user_id, reason, keep)
        return len(rows)

    async def end_all_sessions(self, user_id: str, reason: str = "signed_out_everywhere",
                               keep: str | None = None) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._end_sessions(conn, user_id, reason, keep)

    async def change_password(self, user_id: str, session_id: str | None, current: str,
                              new: str) -> int:
        """Set a new password after checking the current one; every other session of
        the user ends. Returns how many ended."""
        row = await self.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        if row is None or not await self._verify_password(row["password_hash"], current):
            raise Invalid("current_password", "is not the current password")
        password_hash = await self._hash_password(new)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1",
                               user_id, password_hash)
            ended = await self._end_sessions(conn, user_id, "password_changed", session_id)
            await self._audit(conn, None, Actor(user_id, row["email"]), "user.password_change",
                              "user", user_id, {"sessions_ended": ended})
        return ended

    async def user_by_email(self, email: str) -> dict:
        row = await self.pool.fetchrow("SELECT * FROM users WHERE lower(email) = lower($1)",
                                       email.strip())
        if row is None:
            raise NotFound(f"no user with email {email.strip()}")
        return admin_user_out(row)

    async def set_password(self, actor: Actor, user_id: str, new: str) -> int:
        """An operator sets a user's password: every session of the user ends and
        pending reset links stop working. Returns how many sessions ended."""
        password_hash = await self._hash_password(new)
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval("UPDATE users SET password_hash = $2 WHERE id = $1"
                                       " RETURNING id", user_id, password_hash)
            if done is None:
                raise NotFound("user not found")
            await conn.execute("UPDATE password_resets SET used_at = now() WHERE user_id = $1"
                               " AND used_at IS NULL", user_id)
            ended = await self._end_sessions(conn, user_id, "password_reset")
            await self._audit(conn, None, actor, "user.password_set", "user", user_id,
                              {"sessions_ended": ended})
        return ended

    async def create_password_reset(self, actor: Actor, user_id: str,
                                    ttl: timedelta = RESET_TTL) -> dict:
        """A one-time reset token (shown once; stored as SHA-256). Earlier pending
        tokens of the user stop working."""
        token = "rgp_" + secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id):
                raise NotFound("user not found")
            await conn.execute("UPDATE password_resets SET used_at = now() WHERE user_id = $1"
                               " AND used_at IS NULL", user_id)
            row = await conn.fetchrow(
                "INSERT INTO password_resets (id, user_id, token_hash, expires_at)"
                " VALUES ($1, $2, $3, $4) RETURNING *", new_id("pwr"), user_id,
                _sha256(token), utcnow() + ttl)
            await self._audit(conn, None, actor, "user.password_reset_link", "user", user_id)
        return {"token": token, "expires_at": row["expires_at"]}

    async def reset_password(self, token: str, new: str) -> dict:
        """Use a reset token: the password changes, every session of the user ends."""
        password_hash = await self._hash_password(new)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE password_resets SET used_at = now() WHERE token_hash = $1"
                " AND used_at IS NULL AND expires_at > now() RETURNING user_id",
                _sha256(token))
            if row is None:
                raise Invalid("token", "is not a valid reset link (used, replaced or expired);"
                                       " ask an operator for a new one")
            user = await conn.fetchrow("UPDATE users SET password_hash = $2 WHERE id = $1"
                                       " RETURNING *", row["user_id"], password_hash)
            ended = await self._end_sessions(conn, user["id"], "password_reset")
            await self._audit(conn, None, Actor(user["id"], user["email"]),
                              "user.password_reset", "user", user["id"],
                              {"sessions_ended": ended})
        return user_out(user)

    async def is_operator(self, user_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT operator FROM users WHERE id = $1"
                                             " AND disabled_at IS NULL", user_id))

    async def set_operator(self, actor: Actor, user_id: str, operator: bool) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("UPDATE users SET operator = $2 WHERE id = $1"
                                      " RETURNING *", user_id, operator)
            if row is None:
                raise NotFound("user not found")
            await self._audit(conn, None, actor, "user.operator_grant" if operator
                              else "user.operator_revoke", "user", user_id)
        return admin_user_out(row)

    async def list_users(self, limit: int = 500) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT u.*, (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND"
            " s.revoked_at IS NULL AND s.expires_at > now()) AS sessions"
            " FROM users u ORDER BY u.created_at, u.id LIMIT $1", limit)
        return [admin_user_out(r) for r in rows]

    async def set_disabled(self, actor: Actor, user_id: str, disabled: bool) -> dict:
        """Disable (every session ends at once: the next request with any of the
        user's access tokens or cookies is refused) or enable a user."""
        if disabled and actor.user_id == user_id:
            raise Conflict("you cannot disable your own account")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now())"
                " ELSE NULL END WHERE id = $1 RETURNING *", user_id, disabled)
            if row is None:
                raise NotFound("user not found")
            ended = 0
            if disabled:
                ended = await self._end_sessions(conn, user_id, "user_disabled")
                await conn.execute("UPDATE password_resets SET used_at = now()"
                                   " WHERE user_id = $1 AND used_at IS NULL", user_id)
            await self._audit(conn, None, actor, "user.disable" if disabled else "user.enable",
                              "user", user_id, {"sessions_ended": ended} if disabled else {})
        return admin_user_out(row)

    # -- workspaces, members, invitations -----------------------------------------------

    async def _create_workspace(self, conn, actor: Actor, name: str):
        workspace = await conn.fetchrow(
            "INSERT INTO workspaces (id, name) VALUES ($1, $2) RETURNING *", new_id("ws"), name)
        await conn.execute("INSERT INTO memberships (workspace_id, user_id, role)"
                           " VALUES ($1, $2, 'owner')", workspace["id"], actor.user_id)
        await self._audit(conn, workspace["id"], actor, "workspace.create", "workspace",
                          workspace["id"], {"name": name})
        return workspace

    async def create_workspace(self, actor: Actor, name: str) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            return workspace_out(await self._create_workspace(conn, actor, name), "owner")

    async def list_workspaces(self, user_id: str) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT w.*, m.role FROM workspaces w JOIN memberships m ON m.workspace_id = w.id"
            " WHERE m.user_id = $1 ORDER BY w.created_at, w.id", user_id)
        return [workspace_out(r, r["role"]) for r in rows]

    async def role_of(self, workspace_id: str, user_id: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT role FROM memberships WHERE workspace_id = $1 AND user_id = $2",
            workspace_id, user_id)

    async def get_workspace(self, workspace_id: str, role: str | None = None) -> dict:
        row = await self.pool.fetchrow("SELECT * FROM workspaces WHERE id = $1", workspace_id)
        if row is None:
            raise NotFound("workspace not found")
        return workspace_out(row, role)

    async def rename_workspace(self, actor: Actor, workspace_id: str, name: str,
                               role: str | None = None) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("UPDATE workspaces SET name = $2 WHERE id = $1"
                                      " RETURNING *", workspace_id, name)
            if row is None:
                raise NotFound("workspace not found")
            await self._audit(conn, workspace_id, actor, "workspace.update", "workspace",
                              workspace_id, {"name": name})
        return workspace_out(row, role)

    async def list_members(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT m.user_id, m.role, m.created_at, u.email, u.name FROM memberships m"
            " JOIN users u ON u.id = m.user_id WHERE m.workspace_id = $1"
            " ORDER BY m.created_at, u.email", workspace_id)
        return [member_out(r) for r in rows]

    async def _member(self, conn, workspace_id: str, user_id: str):
        row = await conn.fetchrow(
            "SELECT m.user_id, m.role, m.created_at, u.email, u.name FROM memberships m"
            " JOIN users u ON u.id = m.user_id WHERE m.workspace_id = $1 AND m.user_id = $2"
            " FOR UPDATE OF m", workspace_id, user_id)
        if row is None:
            raise NotFound("member not found")
        return row

    @staticmethod
    def _check_can_manage(actor_role: str, target_role: str, new_role: str | None) -> None:
        if "owner" in (target_role, new_role) and actor_role != "owner":
            raise Forbidden("only an owner can grant or take away the owner role")

    async def _owners_after(self, conn, workspace_id: str, user_id: str) -> int:
        await conn.execute("SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", workspace_id)
        return await conn.fetchval(
            "SELECT count(*) FROM memberships WHERE workspace_id = $1 AND role = 'owner'"
            " AND user_id <> $2", workspace_id, user_id)

    async def set_member_role(self, actor: Actor, actor_role: str, workspace_id: str,
                              user_id: str, role: str) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            member = await self._member(conn, workspace_id, user_id)
            self._check_can_manage(actor_role, member["role"], role)
            if member["role"] == "owner" and role != "owner" \
                    and not await self._owners_after(conn, workspace_id, user_id):
                raise Conflict("a workspace keeps at least one owner")
            await conn.execute("UPDATE memberships SET role = $3 WHERE workspace_id = $1"
                               " AND user_id = $2", workspace_id, user_id, role)
            await self._audit(conn, workspace_id, actor, "member.update", "user", user_id,
                              {"from": member["role"], "to": role})
            member = await self._member(conn, workspace_id, user_id)
        return member_out(member)

    async def remove_member(self, actor: Actor, actor_role: str, workspace_id: str,
                            user_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            member = await self._member(conn, workspace_id, user_id)
            if user_id != actor.user_id:
                self._check_can_manage(actor_role, member["role"], None)
            if member["role"] == "owner" \
                    and not await self._owners_after(conn, workspace_id, user_id):
                raise Conflict("a workspace keeps at least one owner")
            await conn.execute("DELETE FROM memberships WHERE workspace_id = $1"
                               " AND user_id = $2", workspace_id, user_id)
            await self._audit(conn, workspace_id, actor, "member.remove", "user", user_id,
                              {"role": member["role"]})

    async def create_invitation(self, actor: Actor, actor_role: str, workspace_id: str,
                                email: str, role: str) -> dict:
        if role == "owner" and actor_role != "owner":
            raise Forbidden("only an owner can invite an owner")
        token = "rgi_" + secrets.token_urlsafe(24)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO invitations (id, workspace_id, email, role, token_hash, invited_by,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                new_id("inv"), workspace_id, email, role, _sha256(token), actor.user_id,
                utcnow() + INVITATION_TTL)
            await self._audit(conn, workspace_id, actor, "invitation.create", "invitation",
                              row["id"], {"email": email, "role": role})
        return {**invitation_out(row), "token": token}

    async def list_invitations(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch("SELECT * FROM invitations WHERE workspace_id = $1"
                                     " ORDER BY created_at DESC, id", workspace_id)
        return [invitation_out(r) for r in rows]

    async def revoke_invitation(self, actor: Actor, workspace_id: str, invitation_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE invitations SET revoked_at = now() WHERE workspace_id = $1 AND id = $2"
                " AND revoked_at IS NULL AND accepted_at IS NULL RETURNING id",
                workspace_id, invitation_id)
            if done is None:
                raise NotFound("invitation not found or no longer pending")
            await self._audit(conn, workspace_id, actor, "invitation.revoke", "invitation",
                              invitation_id)

    async def _accept(self, conn, user, token: str):
        row = await conn.fetchrow(
            "UPDATE invitations SET accepted_at = now() WHERE token_hash = $1"
            " AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()"
            " AND lower(email) = lower($2) RETURNING *", _sha256(token), user["email"])
        if row is None:
            raise Invalid("invitation", "is not a pending invitation for this email address")
        await conn.execute(
            "INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, $3)"
            " ON CONFLICT (workspace_id, user_id) DO NOTHING",
            row["workspace_id"], user["id"], row["role"])
        role = await conn.fetchval("SELECT role FROM memberships WHERE workspace_id = $1"
                                   " AND user_id = $2", row["workspace_id"], user["id"])
        await self._audit(conn, row["workspace_id"], Actor(user["id"], user["email"]),
                          "invitation.accept", "invitation", row["id"])
        workspace = await conn.fetchrow("SELECT * FROM workspaces WHERE id = $1",
                                        row["workspace_id"])
        return workspace, role

    async def accept_invitation(self, user_id: str, token: str) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            user = await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
            # A member accepting again would use the invitation up for nothing (and an
            # admin may mean it for a role change): refuse, and leave it pending. Said
            # only for a pending invitation to this user's own address.
            role = await conn.fetchval(
                "SELECT m.role FROM invitations i JOIN memberships m ON m.workspace_id ="
                " i.workspace_id AND m.user_id = $2 WHERE i.token_hash = $1"
                " AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()"
                " AND lower(i.email) = lower($3)", _sha256(token), user_id, user["email"])
            if role is not None:
                raise Conflict(f"invitation: you are already a member of this workspace (as "
                               f"{role}); the invitation stays pending", "invitation")
            workspace, role = await self._accept(conn, user, token)
        return workspace_out(workspace, role)

    # -- policies -----------------------------------------------------------------------

    async def list_policies(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch("SELECT * FROM policies WHERE workspace_id = $1"
                                     " ORDER BY created_at, id", workspace_id)
        return [policy_out(r) for r in rows]

    async def _policy_row(self, conn, workspace_id: str, policy_id: str, lock: bool = False):
        row = await conn.fetchrow(
            "SELECT * FROM policies WHERE workspace_id = $1 AND id = $2"
            + (" FOR UPDATE" if lock else ""), workspace_id, policy_id)
        if row is None:
            raise NotFound("policy not found")
        return row

    async def get_policy(self, workspace_id: str, policy_id: str) -> dict:
        async with self.pool.acquire() as conn:
            return policy_out(await self._policy_row(conn, workspace_id, policy_id))

    async def create_policy(self, actor: Actor, workspace_id: str, body: Any) -> dict:
        clean = validate.policy(body)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO policies (id, workspace_id, name, limits, scope, mode, algorithm,"
                " failure_mode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                new_id("pol"), workspace_id, clean["name"], clean["limits"], clean["scope"],
                clean["mode"], clean["algorithm"], clean["failure_mode"])
            await self._audit(conn, workspace_id, actor, "policy.create", "policy", row["id"],
                              clean)
            await self._notify(conn, workspace_id, "policy", row["id"])
        return policy_out(row)

    async def update_policy(self, actor: Actor, workspace_id: str, policy_id: str,
                            body: Any) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            current = policy_out(await self._policy_row(conn, workspace_id, policy_id, True))
            clean = validate.policy(body, current)
            row = await conn.fetchrow(
                "UPDATE policies SET name = $3, limits = $4, scope = $5, mode = $6,"
                " algorithm = $7, failure_mode = $8, updated_at = now()"
                " WHERE workspace_id = $1 AND id = $2 RETURNING *", workspace_id, policy_id,
                clean["name"], clean["limits"], clean["scope"], clean["mode"],
                clean["algorithm"], clean["failure_mode"])
            await self._audit(conn, workspace_id, actor, "policy.update", "policy", policy_id,
                              {k: v for k, v in clean.items() if current.get(k) != v})
            await self._notify(conn, workspace_id, "policy", policy_id)
        return policy_out(row)

    async def delete_policy(self, actor: Actor, workspace_id: str, policy_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._policy_row(conn, workspace_id, policy_id, True)
            users = await conn.fetchval(
                "SELECT (SELECT count(*) FROM apis WHERE policy_id = $1)"
                " + (SELECT count(*) FROM api_keys WHERE policy_id = $1"
                "    AND revoked_at IS NULL)", policy_id)
            if users:
                raise Conflict(f"policy is used by {users} API(s) or key(s); "
                               "point them at another policy first")
            await conn.execute("UPDATE api_keys SET policy_id = NULL WHERE policy_id = $1",
                               policy_id)
            await conn.execute("DELETE FROM policies WHERE workspace_id = $1 AND id = $2",
                               workspace_id, policy_id)
            await self._audit(conn, workspace_id, actor, "policy.delete", "policy", policy_id)
            await self._notify(conn, workspace_id, "policy", policy_id)

    async def _check_policy_ref(self, conn, workspace_id: str, policy_id: str | None) -> None:
        """The policy exists, and stays until this transaction ends: FOR KEY SHARE makes a
        concurrent delete_policy wait for it (and then see the new reference: 409), or,
        if the delete came first, finds no row (409 naming the field: the request is well
        formed, the workspace's current state refuses it), never a foreign-key error."""
        if policy_id is not None and not await conn.fetchval(
                "SELECT 1 FROM policies WHERE workspace_id = $1 AND id = $2 FOR KEY SHARE",
                workspace_id, policy_id):
            raise Conflict("policy_id: no such policy in this workspace", "policy_id")

    # -- APIs ---------------------------------------------------------------------------

    async def list_apis(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch("SELECT * FROM apis WHERE workspace_id = $1"
                                     " ORDER BY created_at, id", workspace_id)
        return [api_out(r) for r in rows]

    async def _api_row(self, conn, workspace_id: str, api_id: str, lock: bool = False):
        row = await conn.fetchrow("SELECT * FROM apis WHERE workspace_id = $1 AND id = $2"
                                  + (" FOR UPDATE" if lock else ""), workspace_id, api_id)
        if row is None:
            raise NotFound("API not found")
        return row

    async def get_api(self, workspace_id: str, api_id: str) -> dict:
        async with self.pool.acquire() as conn:
            return api_out(await self._api_row(conn, workspace_id, api_id))

    def _seal_headers(self, api_id: str, headers: dict[str, str]) -> dict[str, str]:
        if headers and self.keyring is None:
            raise Invalid("upstream_headers", "the server has no ENCRYPTION_KEY to store "
                                              "credentials with")
        return {name: self.keyring.encrypt(value, header_aad(api_id, name))
                for name, value in headers.items()}

    async def _check_route(self, conn, workspace_id: str, host: str | None,
                           prefix: str) -> None:
        """Refuse a route that could take a request meant for another workspace's API.
        A host route needs the host assigned to this workspace (in an install with one
        workspace, routing on an unassigned host claims it). An any-host route needs the
        any-host routes unreserved (or reserved to this workspace) and no other
        workspace's any-host prefix equal to, above or below its own. The 409s never
        name anything of another workspace."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROUTES_LOCK)
        owner = await conn.fetchval("SELECT workspace_id FROM route_hosts WHERE host = $1",
                                    host or ANY_HOST)
        if host is not None:
            if owner == workspace_id:
                return
            if owner is None and not await conn.fetchval(
                    "SELECT 1 FROM workspaces WHERE id <> $1 LIMIT 1", workspace_id):
                await conn.execute("INSERT INTO route_hosts (host, workspace_id)"
                                   " VALUES ($1, $2)", host, workspace_id)
                return
            raise Conflict(HOST_NOT_ASSIGNED, "host")
        if owner is not None and owner != workspace_id:
            raise Conflict(ANY_HOST_RESERVED, "host")
        if await conn.fetchval(_OVERLAPPING_ANY_HOST, workspace_id, prefix):
            raise Conflict(ROUTE_TAKEN, "prefix")

    async def list_hosts(self) -> list[dict]:
        """Every assigned host (operators only: names every workspace)."""
        rows = await self.pool.fetch("SELECT * FROM route_hosts ORDER BY host")
        return [host_owner_out(r) for r in rows]

    async def assign_host(self, actor: Actor, host: str, workspace_id: str) -> dict:
        """Give ``host`` ('*' for the any-host routes) to a workspace. Refused while
        another workspace has APIs on it (the message names them: operators only)."""
        host = validate.route_host(host)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ROUTES_LOCK)
            if not await conn.fetchval("SELECT 1 FROM workspaces WHERE id = $1",
                                       workspace_id):
                raise NotFound(f"workspace {workspace_id} not found")
            users = await conn.fetch(
                "SELECT workspace_id, count(*) AS apis FROM apis"
                " WHERE coalesce(host, '*') = $1 AND workspace_id <> $2"
                " GROUP BY workspace_id ORDER BY workspace_id", host, workspace_id)
            if users:
                raise Conflict(f"{host} is routed by APIs of other workspaces ("
                               + ", ".join(f"{r['workspace_id']}: {r['apis']}" for r in users)
                               + "); delete or move them first")
            row = await conn.fetchrow(
                "INSERT INTO route_hosts (host, workspace_id) VALUES ($1, $2)"
                " ON CONFLICT (host) DO UPDATE SET workspace_id = excluded.workspace_id,"
                " assigned_at = now() RETURNING *", host, workspace_id)
            await self._audit(conn, workspace_id, actor, "host.assign", "host", host)
            await self._notify(conn, workspace_id, "host", host)
        return host_owner_out(row)

    async def unassign_host(self, actor: Actor, host: str) -> None:
        """Take ``host`` back. Its APIs stay but stop routing until it is assigned again
        (any-host: the any-host routes become shared again)."""
        host = validate.route_host(host)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ROUTES_LOCK)
            workspace_id = await conn.fetchval(
                "DELETE FROM route_hosts WHERE host = $1 RETURNING workspace_id", host)
            if workspace_id is None:
                raise NotFound(f"{host} is not assigned")
            await self._audit(conn, workspace_id, actor, "host.unassign", "host", host)
            await self._notify(conn, workspace_id, "host", host)

    async def _write_api(self, conn, sql: str, *args):
        try:
            return await conn.fetchrow(sql, *args)
        except asyncpg.UniqueViolationError:
            raise Conflict("prefix: this host and prefix already route to another API",
                           "prefix") from None

    async def create_api(self, actor: Actor, workspace_id: str, body: Any) -> dict:
        clean = validate.api(body, egress=self.egress)
        api_id = new_id("api")
        sealed = self._seal_headers(api_id, clean.get("upstream_headers", {}))
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_policy_ref(conn, workspace_id, clean["policy_id"])
            await self._check_route(conn, workspace_id, clean["host"], clean["prefix"])
            row = await self._write_api(
                conn,
                "INSERT INTO apis (id, workspace_id, name, host, prefix, upstream_url,"
                " strip_prefix, policy_id, timeout_seconds, max_body_bytes, upstream_headers)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                api_id, workspace_id, clean["name"], clean["host"], clean["prefix"],
                clean["upstream_url"], clean["strip_prefix"], clean["policy_id"],
                clean["timeout_seconds"], clean["max_body_bytes"], sealed)
            await self._audit(conn, workspace_id, actor, "api.create", "api", api_id,
                              {**{k: v for k, v in clean.items() if k != "upstream_headers"},
                               "upstream_header_names": sorted(sealed)})
            await self._notify(conn, workspace_id, "api", api_id)
        return api_out(row)

    async def update_api(self, actor: Actor, workspace_id: str, api_id: str, body: Any) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            current_row = await self._api_row(conn, workspace_id, api_id, True)
            current = api_out(current_row)
            clean = validate.api(body, current, self.egress)
            sealed = current_row["upstream_headers"]
            if "upstream_headers" in clean:
                sealed = self._seal_headers(api_id, clean["upstream_headers"])
            await self._check_policy_ref(conn, workspace_id, clean["policy_id"])
            if (clean["host"], clean["prefix"]) != (current["host"], current["prefix"]):
                await self._check_route(conn, workspace_id, clean["host"], clean["prefix"])
            row = await self._write_api(
                conn,
                "UPDATE apis SET name = $3, host = $4, prefix = $5, upstream_url = $6,"
                " strip_prefix = $7, policy_id = $8, timeout_seconds = $9, max_body_bytes = $10,"
                " upstream_headers = $11, updated_at = now()"
                " WHERE workspace_id = $1 AND id = $2 RETURNING *",
                workspace_id, api_id, clean["name"], clean["host"], clean["prefix"],
                clean["upstream_url"], clean["strip_prefix"], clean["policy_id"],
                clean["timeout_seconds"], clean["max_body_bytes"], sealed)
            changed = {k: v for k, v in clean.items()
                       if k != "upstream_headers" and current.get(k) != v}
            if "upstream_headers" in clean:
                changed["upstream_header_names"] = sorted(sealed)
            await self._audit(conn, workspace_id, actor, "api.update", "api", api_id, changed)
            await self._notify(conn, workspace_id, "api", api_id)
        return api_out(row)

    async def delete_api(self, actor: Actor, workspace_id: str, api_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._api_row(conn, workspace_id, api_id, True)
            await conn.execute("DELETE FROM apis WHERE workspace_id = $1 AND id = $2",
                               workspace_id, api_id)
            await self._audit(conn, workspace_id, actor, "api.delete", "api", api_id)
            await self._notify(conn, workspace_id, "api", api_id)

    # -- API keys -----------------------------------------------------------------------

    async def list_keys(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch("SELECT * FROM api_keys WHERE workspace_id = $1"
                                     " ORDER BY created_at DESC, id", workspace_id)
        now = utcnow()
        return [key_out(r, now) for r in rows]

    async def _key_row(self, conn, workspace_id: str, key_id: str, lock: bool = False):
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE workspace_id = $1 AND id = $2"
                                  + (" FOR UPDATE" if lock else ""), workspace_id, key_id)
        if row is None:
            raise NotFound("key not found")
        return row

    async def get_key(self, workspace_id: str, key_id: str) -> dict:
        async with self.pool.acquire() as conn:
            return key_out(await self._key_row(conn, workspace_id, key_id))

    async def _insert_key(self, conn, actor: Actor, workspace_id: str, name: str,
                          policy_id: str | None, expires_at: datetime | None) -> tuple[Any, str]:
        plaintext = new_key()
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, workspace_id, name, key_hash, prefix, last_four,"
            " policy_id, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " RETURNING *", new_id("key"), workspace_id, name, hash_key(plaintext),
            plaintext[:8], plaintext[-4:], policy_id, expires_at, actor.user_id)
        return row, plaintext

    async def create_key(self, actor: Actor, workspace_id: str, body: Any) -> dict:
        """A new key; the result's ``key`` is the plaintext, returned this once only."""
        clean = validate.key(body, utcnow())
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_policy_ref(conn, workspace_id, clean["policy_id"])
            row, plaintext = await self._insert_key(conn, actor, workspace_id, clean["name"],
                                                    clean["policy_id"], clean["expires_at"])
            await self._audit(conn, workspace_id, actor, "key.create", "key", row["id"],
                              {"name": clean["name"], "policy_id": clean["policy_id"],
                               "prefix": row["prefix"]})
            await self._notify(conn, workspace_id, "key", row["id"])
        return {**key_out(row), "key": plaintext}

    async def revoke_key(self, actor: Actor, workspace_id: str, key_id: str) -> dict:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._key_row(conn, workspace_id, key_id, True)
            if row["revoked_at"] is None:
                row = await conn.fetchrow("UPDATE api_keys SET revoked_at = now() WHERE id = $1"
                                          " RETURNING *", key_id)
                await self._audit(conn, workspace_id, actor, "key.revoke", "key", key_id,
                                  {"prefix": row["prefix"]})
                await self._notify(conn, workspace_id, "key", key_id)
        return key_out(row)

    async def roll_key(self, actor: Actor, workspace_id: str, key_id: str, body: Any) -> dict:
        """Replace a key: a new one with the same name, policy and expiry; the old one
        keeps working for ``overlap_seconds`` (0: stops at once)."""
        overlap = validate.roll(body)
        now = utcnow()
        async with self.pool.acquire() as conn, conn.transaction():
            old = await self._key_row(conn, workspace_id, key_id, True)
            if key_status(old, now) != "active":
                raise Conflict(f"key is {key_status(old, now)}; only an active key can be rolled")
            new, plaintext = await self._insert_key(conn, actor, workspace_id, old["name"],
                                                    old["policy_id"], old["expires_at"])
            if overlap == 0:
                old = await conn.fetchrow(
                    "UPDATE api_keys SET revoked_at = now(), replaced_by = $2 WHERE id = $1"
                    " RETURNING *", key_id, new["id"])
            else:
                until = now + timedelta(seconds=overlap)
                old = await conn.fetchrow(
                    "UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, $3), $3),"
                    " replaced_by = $2 WHERE id = $1 RETURNING *", key_id, new["id"], until)
            await self._audit(conn, workspace_id, actor, "key.roll", "key", key_id,
                              {"new_key_id": new["id"], "overlap_seconds": overlap})
            await self._notify(conn, workspace_id, "key", key_id)
        return {"key": {**key_out(new), "key": plaintext}, "previous": key_out(old)}

    async def record_last_used(self, used: list[tuple[str, datetime]]) -> int:
        """Move last_used_at forward (never back) for the given (key id, time) pairs."""
        if not used:
            return 0
        result = await self.pool.execute(
            "UPDATE api_keys k SET last_used_at = v.ts"
            " FROM unnest($1::text[], $2::timestamptz[]) AS v(id, ts)"
            " WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.ts)",
            [k for k, _ in used], [t for _, t in used])
        return int(result.split()[-1])

    # -- audit --------------------------------------------------------------------------

    async def list_audit(self, workspace_id: str, limit: int = 100,
                         before: int | None = None) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT * FROM audit_log WHERE workspace_id = $1 AND ($2::bigint IS NULL OR id < $2)"
            " ORDER BY id DESC LIMIT $3", workspace_id, before, limit)
        return [audit_out(r) for r in rows]

    # -- secrets at rest ----------------------------------------------------------------

    async def rotate_secrets(self) -> int:
        """Re-encrypt every upstream credential (and channel secret) not sealed with the
        first ENCRYPTION_KEY. Returns how many values were rewritten."""
        if self.keyring is None:
            raise Invalid("ENCRYPTION_KEY", "is not set")
        count = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT id, workspace_id, upstream_headers FROM apis"
                                    " WHERE upstream_headers <> '{}'::jsonb FOR UPDATE")
            for row in rows:
                headers, changed = dict(row["upstream_headers"]), False
                for name, value in headers.items():
                    if self.keyring.needs_rotation(value):
                        aad = header_aad(row["id"], name)
                        headers[name] = self.keyring.encrypt(self.keyring.decrypt(value, aad),
                                                             aad)
                        changed = True
                        count += 1
                if changed:
                    await conn.execute("UPDATE apis SET upstream_headers = $2 WHERE id = $1",
                                       row["id"], headers)
                    await self._notify(conn, row["workspace_id"], "api", row["id"])
            rows = await conn.fetch("SELECT id, secret, url_credentials FROM"
                                    " notification_channels WHERE secret IS NOT NULL"
                                    " OR url_credentials IS NOT NULL FOR UPDATE")
            for row in rows:
                # the channel's secret, and a webhook URL with credentials (user:password@)
                for column, aad in (("secret", f"channel:{row['id']}:secret"),
                                    ("url_credentials", f"channel:{row['id']}:url")):
                    value = row[column]
                    if value is not None and self.keyring.needs_rotation(value):
                        await conn.execute(
                            f"UPDATE notification_channels SET {column} = $2 WHERE id = $1",
                            row["id"], self.keyring.encrypt(self.keyring.decrypt(value, aad),
                                                            aad))
                        count += 1
        return count
