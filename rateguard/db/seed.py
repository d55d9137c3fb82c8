"""Demo data, made through the same Repository operations as the management API.

Idempotent: run again, it finds the demo user, workspace, policy and API (and points the
API at the given upstream), and keeps a known key if it is still active.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from rateguard.db.errors import Conflict
from rateguard.db.repository import Actor, Repository
from rateguard.snapshot.keys import hash_key

DEMO_EMAIL = "demo@rateguard.local"
DEMO_POLICY = {"name": "demo", "limits": ["10/min"], "scope": "key", "mode": "enforce",
               "algorithm": "sliding_log", "failure_mode": "open"}


@dataclass
class Demo:
    email: str
    password: str | None  # None: the account existed already; its password is unchanged
    workspace_id: str
    policy: dict
    api: dict
    key: str | None  # plaintext, when made now or when the known one is still active
    key_id: str | None


def new_password() -> str:
    return secrets.token_urlsafe(12)


async def seed(repo: Repository, upstream_url: str, *, email: str = DEMO_EMAIL,
               password: str | None = None, known_key: str | None = None,
               prefix: str = "/echo") -> Demo:
    user = await repo.pool.fetchrow("SELECT * FROM users WHERE lower(email) = lower($1)", email)
    made_password = None
    if user is None:
        made_password = password or new_password()
        try:
            user_out, workspace, _ = await repo.signup(
                email, made_password, "Demo", "Demo workspace")
            user_id, workspace_id = user_out["id"], workspace["id"]
        except Conflict:  # another seed won the race
            made_password = None
            user = await repo.pool.fetchrow(
                "SELECT * FROM users WHERE lower(email) = lower($1)", email)
    if user is not None:
        user_id = user["id"]
        workspace_id = await repo.pool.fetchval(
            "SELECT workspace_id FROM memberships WHERE user_id = $1 AND role = 'owner'"
            " ORDER BY created_at LIMIT 1", user_id)
        if workspace_id is None:
            workspace_id = (await repo.create_workspace(Actor(user_id, email),
                                                        "Demo workspace"))["id"]
    actor = Actor(user_id, email)

    policy = next((p for p in await repo.list_policies(workspace_id)
                   if p["name"] == DEMO_POLICY["name"]), None)
    if policy is None:
        policy = await repo.create_policy(actor, workspace_id, DEMO_POLICY)

    api = next((a for a in await repo.list_apis(workspace_id) if a["prefix"] == prefix), None)
    if api is None:
        api = await repo.create_api(actor, workspace_id, {
            "name": "echo", "prefix": prefix, "upstream_url": upstream_url,
            "strip_prefix": True, "policy_id": policy["id"]})
    elif api["upstream_url"] != upstream_url:
        api = await repo.update_api(actor, workspace_id, api["id"],
                                    {"upstream_url": upstream_url})

    key, key_id = None, None
    if known_key:
        key_id = await repo.pool.fetchval(
            "SELECT id FROM api_keys WHERE workspace_id = $1 AND key_hash = $2"
            " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
            workspace_id, hash_key(known_key))
        key = known_key if key_id else None
    if key is None:
        made = await repo.create_key(actor, workspace_id,
                                     {"name": "demo-key", "policy_id": policy["id"]})
        key, key_id = made["key"], made["id"]
    return Demo(email, made_password, workspace_id, policy, api, key, key_id)
