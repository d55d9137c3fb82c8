"""Alert rules, notification channels, history and deliveries in PostgreSQL: the
validation and queries the management API and the CLI share.

Channel secrets (a webhook's signing secret, a Slack webhook URL, an SMTP password) are
sealed with ENCRYPTION_KEY, bound to ``channel:<id>:secret`` (the binding
``rateguard secrets rotate`` uses), and never returned; a generated webhook secret is
returned once, in the answer that creates the channel.
"""

from __future__ import annotations

import math
import re
import secrets as _secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from rateguard.alerts import notify
from rateguard.alerts.rules import (
    COMPARATORS, MAX_FOR_SECONDS, MAX_WINDOW_SECONDS, METRICS, RATIO_METRICS, SYMBOLS,
)
from rateguard.db import validate
from rateguard.db.errors import Conflict, Invalid, NotFound
from rateguard.db.repository import Actor, Repository, new_id, utcnow
from rateguard.net.egress import ALWAYS, CheckedResolver, EgressPolicy

CHANNEL_FIELDS = {"name", "kind", "url", "secret", "host", "port", "starttls", "tls_verify",
                  "username", "password", "from", "to"}
RULE_FIELDS = {"name", "metric", "comparator", "threshold", "window_seconds", "for_seconds",
               "api_id", "channel_ids", "enabled"}
MAX_CHANNELS_PER_RULE = 20
_SMTP_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[?[0-9A-Fa-f:.]+\]?$")


# -- validation ----------------------------------------------------------------------------

def _url(body: dict, name: str = "url", egress: EgressPolicy = ALWAYS) -> str:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > 2000:
        raise Invalid(name, "is required: an http(s) URL")
    parts = urlsplit(value)
    try:
        parts.port
    except ValueError:
        raise Invalid(name, "has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            ch in value for ch in "\r\n\x00 "):
        raise Invalid(name, "must be an http(s) URL")
    refused = egress.check_host(parts.hostname)  # the one egress policy (net/egress.py)
    if refused is not None:
        raise Invalid(name, refused)
    return value


def mask_url(url: str) -> str:
    """``url`` with its ``user:password@`` (a secret) shown as ``***:***@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    masked = "***" + (":***" if parts.password is not None else "")
    return urlunsplit(parts._replace(netloc=masked + "@" + parts.netloc.rpartition("@")[2]))


def url_aad(channel_id: str) -> str:
    """What a webhook URL with credentials is bound to when sealed (see crypto.py)."""
    return f"channel:{channel_id}:url"


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise Invalid(name, "must be true or false")
    return value


def channel(body: Any, egress: EgressPolicy = ALWAYS) -> tuple[dict, str | None, bool]:
    """(clean: name, kind, config; the secret to seal or None; whether it was generated)."""
    body = validate.body_object(body, CHANNEL_FIELDS, {"name", "kind"})
    name = validate.text(body, "name")
    kind = validate.choice(body, "kind", notify.KINDS)
    allowed = {"webhook": {"url", "secret"}, "slack": {"url"},
               "smtp": {"host", "port", "starttls", "tls_verify", "username", "password",
                        "from", "to"}}[kind] | {"name", "kind"}
    for field in sorted(set(body) - allowed):
        raise Invalid(field, f"is not a field of a {kind} channel")
    generated = False
    if kind == "webhook":
        url = _url(body, egress=egress)
        config = {"url": mask_url(url)}
        if config["url"] != url:  # user:password@ is a secret: sealed, shown masked
            config["sealed_url"] = url
        secret = body.get("secret")
        if secret is None:
            secret, generated = "whsec_" + _secrets.token_urlsafe(32), True
        elif not isinstance(secret, str) or not 16 <= len(secret) <= 256:
            raise Invalid("secret", "must be 16 to 256 characters (omit it to get one made)")
    elif kind == "slack":
        url = _url(body, egress=egress)
        parts = urlsplit(url)
        config = {"url_hint": f"{parts.scheme}://{parts.hostname}/..."}  # the URL is a secret
        secret = url
    else:
        host = validate.text(body, "host", max_len=253)
        if not _SMTP_HOST.match(host):
            raise Invalid("host", "must be a host name or address")
        refused = egress.check_host(host)
        if refused is not None:
            raise Invalid("host", refused)
        starttls = _bool(body, "starttls", True)
        port = body.get("port", 587 if starttls else 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise Invalid("port", "must be a port number")
        recipients = body.get("to")
        if isinstance(recipients, str):
            recipients = [recipients]
        if not isinstance(recipients, list) or not 1 <= len(recipients) <= 20:
            raise Invalid("to", "must be a list of 1 to 20 email addresses")
        to = [validate.email({"to": r}, "to") for r in recipients]
        username = validate.text(body, "username", max_len=254, required=False)
        secret = body.get("password")
        if secret is not None and (not isinstance(secret, str) or not 1 <= len(secret) <= 1024):
            raise Invalid("password", "must be 1 to 1024 characters")
        if secret is not None and not username:
            raise Invalid("username", "is required with a password")
        config = {"host": host, "port": port, "starttls": starttls,
                  "tls_verify": _bool(body, "tls_verify", True), "username": username,
                  "from": validate.email(body, "from"), "to": to}
    return {"name": name, "kind": kind, "config": config}, secret, generated


def rule(body: Any) -> dict:
    body = validate.body_object(body, RULE_FIELDS,
                                {"name", "metric", "comparator", "threshold", "window_seconds"})
    metric = validate.choice(body, "metric", METRICS)
    comparator = validate.choice(body, "comparator", tuple(COMPARATORS))
    threshold = body.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0 or threshold > 1e12:
        raise Invalid("threshold", "must be a number, 0 or more")
    if metric in RATIO_METRICS and threshold > 1:
        raise Invalid("threshold", f"{metric} is a share from 0 to 1 (0.05 is 5%)")

    def seconds(name: str, low: int, high: int, default: int | None = None) -> int:
        value = body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(name, f"must be an integer from {low} to {high} (seconds)")
        return value

    channel_ids = body.get("channel_ids", [])
    if not isinstance(channel_ids, list) or len(channel_ids) > MAX_CHANNELS_PER_RULE \
            or not all(isinstance(c, str) and 1 <= len(c) <= 64 for c in channel_ids):
        raise Invalid("channel_ids", f"must be a list of at most {MAX_CHANNELS_PER_RULE} "
                                     "channel ids")
    return {"name": validate.text(body, "name"), "metric": metric,
            "comparison": COMPARATORS[comparator], "threshold": float(threshold),
            "window_seconds": seconds("window_seconds", 1, MAX_WINDOW_SECONDS),
            "for_seconds": seconds("for_seconds", 0, MAX_FOR_SECONDS, 0),
            "api_id": validate.optional_id(body, "api_id"),
            "channel_ids": list(dict.fromkeys(channel_ids)),
            "enabled": _bool(body, "enabled", True)}


# -- row shapes ----------------------------------------------------------------------------

def channel_out(row) -> dict:
    config = dict(row["config"])
    if isinstance(config.get("url"), str):
        config["url"] = mask_url(config["url"])  # also rows stored before sealing
    return {"id": row["id"], "workspace_id": row["workspace_id"], "name": row["name"],
            "kind": row["kind"], "config": config,
            "has_secret": row["secret"] is not None, "created_at": row["created_at"]}


def rule_out(row: dict) -> dict:
    state = row.get("state")
    return {"id": row["id"], "workspace_id": row["workspace_id"], "api_id": row["api_id"],
            "name": row["name"], "metric": row["metric"],
            "comparator": SYMBOLS[row["comparison"]], "threshold": row["threshold"],
            "window_seconds": row["window_seconds"], "for_seconds": row["for_seconds"],
            "channel_ids": list(row["channel_ids"]), "enabled": row["enabled"],
            "created_at": row["created_at"], "updated_at": row["updated_at"],
            "state": state or "ok", "state_since": row.get("since"),
            "last_value": row.get("last_value"),
            "last_evaluated_at": row.get("last_evaluated_at")}


def history_out(row) -> dict:
    return {"id": row["id"], "rule_id": row["rule_id"], "seq": row["seq"],
            "from_state": row["from_state"], "to_state": row["to_state"],
            "value": row["value"], "threshold": row["threshold"],
            "created_at": row["created_at"]}


def delivery_out(row, attempts: list) -> dict:
    return {"id": row["id"], "channel_id": row["channel_id"], "history_id": row["history_id"],
            "kind": row["kind"], "status": row["status"], "attempts": row["attempts"],
            "last_error": row["last_error"], "created_at": row["created_at"],
            "next_attempt_at": row["next_attempt_at"] if row["status"] == "pending" else None,
            "delivered_at": row["delivered_at"],
            "attempt_log": [{"attempt": a["attempt"], "ok": a["ok"],
                             "status_code": a["status_code"], "error": a["error"],
                             "duration_ms": a["duration_ms"], "at": a["created_at"]}
                            for a in attempts]}


_RULE_SELECT = ("SELECT r.*, s.state, s.since, s.last_value, s.last_evaluated_at"
                " FROM alert_rules r LEFT JOIN alert_state s ON s.rule_id = r.id")


class AlertStore:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.pool = repo.pool

    # -- channels -----------------------------------------------------------------------

    async def list_channels(self, workspace_id: str) -> list[dict]:
        rows = await self.pool.fetch("SELECT * FROM notification_channels WHERE workspace_id"
                                     " = $1 ORDER BY created_at, id", workspace_id)
        return [channel_out(r) for r in rows]

    async def create_channel(self, actor: Actor, workspace_id: str, body: Any) -> dict:
        clean, secret, generated = channel(body, self.repo.egress)
        channel_id = new_id("ch")
        sealed = sealed_url = None
        url = clean["config"].pop("sealed_url", None)
        if url is not None:
            if self.repo.keyring is None:
                raise Invalid("url", "has credentials (user:password@) but the server has "
                                     "no ENCRYPTION_KEY to store them with")
            sealed_url = self.repo.keyring.encrypt(url, url_aad(channel_id))
        if secret is not None:
            if self.repo.keyring is None:
                raise Invalid("secret", "the server has no ENCRYPTION_KEY to store channel "
                                        "secrets with")
            sealed = self.repo.keyring.encrypt(secret, notify.secret_aad(channel_id))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO notification_channels (id, workspace_id, name, kind, config,"
                " secret, url_credentials) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                channel_id, workspace_id, clean["name"], clean["kind"], clean["config"], sealed,
                sealed_url)
            await self.repo._audit(conn, workspace_id, actor, "alert_channel.create",
                                   "alert_channel", channel_id,
                                   {"name": clean["name"], "kind": clean["kind"]})
        out = channel_out(row)
        if generated:
            out["secret"] = secret
        return out

    async def delete_channel(self, actor: Actor, workspace_id: str, channel_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM notification_channels WHERE workspace_id = $1 AND id = $2"
                " RETURNING id", workspace_id, channel_id)
            if deleted is None:
                raise NotFound("channel not found")
            await conn.execute(
                "UPDATE alert_rules SET channel_ids = array_remove(channel_ids, $2),"
                " updated_at = now() WHERE workspace_id = $1 AND $2 = ANY(channel_ids)",
                workspace_id, channel_id)
            await self.repo._audit(conn, workspace_id, actor, "alert_channel.delete",
                                   "alert_channel", channel_id)

    async def load_channel(self, conn, workspace_id: str | None, channel_id: str
                           ) -> notify.Channel:
        row = await conn.fetchrow(
            "SELECT * FROM notification_channels WHERE id = $1"
            " AND ($2::text IS NULL OR workspace_id = $2)", channel_id, workspace_id)
        if row is None:
            raise NotFound("channel not found")
        return decrypt_channel(row, self.repo.keyring)

    async def send_test(self, actor: Actor, workspace_id: str | None, channel_id: str,
                        timeout: float = 10.0) -> dict:
        """Send a test notification now (one attempt, recorded like any other)."""
        async with self.pool.acquire() as conn:
            target = await self.load_channel(conn, workspace_id, channel_id)
        payload = {"event": "test", "channel": target.name, "channel_id": target.id,
                   "workspace_id": target.workspace_id, "at": utcnow().isoformat(),
                   "summary": f"[TEST] RateGuard test notification for channel "
                              f"'{target.name}'"}
        async with self.pool.acquire() as conn:
            outbox_id = await conn.fetchval(
                "INSERT INTO notification_outbox (workspace_id, channel_id, kind, payload)"
                " VALUES ($1, $2, 'test', $3) RETURNING id", target.workspace_id, target.id,
                payload)
        egress = self.repo.egress
        connector = aiohttp.TCPConnector(resolver=CheckedResolver(egress))
        async with aiohttp.ClientSession(connector=connector) as session:
            result = await notify.deliver(target, payload, f"test-{outbox_id}", session,
                                          timeout, egress)
        if not result.ok:  # the caller learns what failed, never what the destination said
            result.error = notify.generic_error(result)
        async with self.pool.acquire() as conn, conn.transaction():
            await record_attempt(conn, outbox_id, 1, result, final=True)
            await self.repo._audit(conn, target.workspace_id, actor, "alert_channel.test",
                                   "alert_channel", target.id, {"ok": result.ok})
        return {"ok": result.ok, "delivery_id": outbox_id, "status_code": result.status_code,
                "error": result.error, "duration_ms": result.duration_ms}

    # -- rules --------------------------------------------------------------------------

    async def list_rules(self, workspace_id: str | None) -> list[dict]:
        rows = await self.pool.fetch(
            _RULE_SELECT + " WHERE ($1::text IS NULL OR r.workspace_id = $1)"
            " ORDER BY r.created_at, r.id", workspace_id)
        return [rule_out(dict(r)) for r in rows]

    async def get_rule(self, workspace_id: str, rule_id: str) -> dict:
        row = await self.pool.fetchrow(_RULE_SELECT + " WHERE r.workspace_id = $1"
                                       " AND r.id = $2", workspace_id, rule_id)
        if row is None:
            raise NotFound("rule not found")
        return rule_out(dict(row))

    async def create_rule(self, actor: Actor, workspace_id: str, body: Any) -> dict:
        clean = rule(body)
        rule_id = new_id("rule")
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR KEY SHARE: the API and channels stay until this rule is committed; a
            # concurrent delete waits (then removes the rule, or the channel from it) or
            # came first and they are not found here (409 naming the field), never a
            # foreign-key error.
            if clean["api_id"] is not None and not await conn.fetchval(
                    "SELECT 1 FROM apis WHERE workspace_id = $1 AND id = $2 FOR KEY SHARE",
                    workspace_id, clean["api_id"]):
                raise Conflict("api_id: no such API in this workspace", "api_id")
            found = await conn.fetch(
                "SELECT id FROM notification_channels WHERE workspace_id = $1"
                " AND id = ANY($2) ORDER BY id FOR KEY SHARE", workspace_id,
                clean["channel_ids"])
            missing = set(clean["channel_ids"]) - {r["id"] for r in found}
            if missing:
                raise Conflict(f"channel_ids: no such channel in this workspace: "
                               f"{sorted(missing)[0]}", "channel_ids")
            row = await conn.fetchrow(
                "INSERT INTO alert_rules (id, workspace_id, api_id, name, metric, comparison,"
                " threshold, window_seconds, for_seconds, channel_ids, enabled)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                rule_id, workspace_id, clean["api_id"], clean["name"], clean["metric"],
                clean["comparison"], clean["threshold"], clean["window_seconds"],
                clean["for_seconds"], clean["channel_ids"], clean["enabled"])
            await conn.execute("INSERT INTO alert_state (rule_id, state) VALUES ($1, 'ok')",
                               rule_id)
            await self.repo._audit(conn, workspace_id, actor, "alert_rule.create",
                                   "alert_rule", rule_id,
                                   {k: v for k, v in clean.items()})
        return rule_out({**dict(row), "state": "ok"})

    async def delete_rule(self, actor: Actor, workspace_id: str | None, rule_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "DELETE FROM alert_rules WHERE id = $1"
                " AND ($2::text IS NULL OR workspace_id = $2) RETURNING workspace_id",
                rule_id, workspace_id)
            if found is None:
                raise NotFound("rule not found")
            await self.repo._audit(conn, found, actor, "alert_rule.delete", "alert_rule",
                                   rule_id)

    # -- history and deliveries ---------------------------------------------------------

    async def history(self, workspace_id: str, rule_id: str | None = None,
                      limit: int = 100) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT * FROM alert_history WHERE workspace_id = $1"
            " AND ($2::text IS NULL OR rule_id = $2) ORDER BY id DESC LIMIT $3",
            workspace_id, rule_id, limit)
        return [history_out(r) for r in rows]

    async def deliveries(self, workspace_id: str, limit: int = 100) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT * FROM notification_outbox WHERE workspace_id = $1"
            " ORDER BY id DESC LIMIT $2", workspace_id, limit)
        attempts = await self.pool.fetch(
            "SELECT * FROM notification_attempts WHERE outbox_id = ANY($1)"
            " ORDER BY outbox_id, attempt", [r["id"] for r in rows])
        by_outbox: dict[int, list] = {}
        for a in attempts:
            by_outbox.setdefault(a["outbox_id"], []).append(a)
        return [delivery_out(r, by_outbox.get(r["id"], [])) for r in rows]


def decrypt_channel(row, keyring) -> notify.Channel:
    secret = None
    if row["secret"] is not None:
        if keyring is None:
            raise Conflict("channel has a secret but ENCRYPTION_KEY is not set")
        secret = keyring.decrypt(row["secret"], notify.secret_aad(row["id"]))
    config = dict(row["config"])
    if row.get("url_credentials") is not None:
        if keyring is None:
            raise Conflict("channel has a sealed URL but ENCRYPTION_KEY is not set")
        config["url"] = keyring.decrypt(row["url_credentials"], url_aad(row["id"]))
    return notify.Channel(row["id"], row["workspace_id"], row["name"], row["kind"],
                          config, secret)


async def record_attempt(conn, outbox_id: int, attempt: int, result: notify.Result, *,
                         final: bool, retry_in: float | None = None) -> None:
    """Record one attempt and move the outbox row on: delivered, failed, or retried in
    ``retry_in`` seconds. Runs in the caller's transaction."""
    await conn.execute(
        "INSERT INTO notification_attempts (outbox_id, attempt, ok, status_code, error,"
        " duration_ms) VALUES ($1, $2, $3, $4, $5, $6)", outbox_id, attempt, result.ok,
        result.status_code, result.error, result.duration_ms)
    if result.ok:
        await conn.execute(
            "UPDATE notification_outbox SET status = 'delivered', attempts = $2,"
            " delivered_at = now(), last_error = NULL WHERE id = $1", outbox_id, attempt)
    elif final or retry_in is None:
        await conn.execute(
            "UPDATE notification_outbox SET status = 'failed', attempts = $2,"
            " last_error = $3 WHERE id = $1", outbox_id, attempt, result.error)
    else:
        await conn.execute(
            "UPDATE notification_outbox SET attempts = $2, last_error = $3,"
            " next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
            outbox_id, attempt, result.error, float(retry_in))
