"""The snapshot from PostgreSQL, kept live with LISTEN/NOTIFY and a periodic full reload.

Same interface as the YAML source: ``load()`` returns a Snapshot, ``watch(apply)`` calls
``apply`` with each newer one. Every change made through the control plane sends a
``NOTIFY rateguard_config`` in its transaction; the source listens on one dedicated
connection and, on a notification, rebuilds the whole snapshot (a handful of indexed
selects, milliseconds for thousands of keys) and swaps it in. Bursts of notifications
collapse into one reload. A full reload also runs every ``reload_interval`` seconds and
after the listening connection is lost and re-established, so a missed notification
delays a change by at most that interval. A failed reload keeps the last good snapshot.

PostgreSQL down: the proxy keeps serving its last snapshot (nothing on the request path
touches the database). The lost listening connection is logged once; reconnection is
retried with a short backoff (0.2 s doubling to ``MAX_BACKOFF``, with jitter so a fleet
of proxies does not reconnect in step), each attempt logged at debug only, and the
return is logged once with the outage's length. The reconnect is followed by a full
reload, so a change made while the listener was away (or in the second after
PostgreSQL came back) lands within about ``MAX_BACKOFF`` plus one reload. A reload has
``RELOAD_TIMEOUT`` seconds: a server that stopped answering without closing the
connection (a network partition) is dropped and reconnected, never waited on for ever.

Revoked keys and keys expired for more than a day are left out: the proxy answers 401
for a key it does not know, exactly as for a revoked one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from typing import Callable

import asyncpg
import orjson

from rateguard.crypto import CryptoError, KeyRing
from rateguard.db.connection import CHANNEL, connect
from rateguard.db.repository import header_aad
from rateguard.errors import ConfigError, RateGuardError
from rateguard.limiter.policy import stored_policy
from rateguard.snapshot.model import Api, ApiKey, Snapshot, Upstream

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.2
MAX_BACKOFF = 1.0
RELOAD_TIMEOUT = 10.0

POLICIES_SQL = ("SELECT id, workspace_id, limits, scope, mode, algorithm, failure_mode"
                " FROM policies ORDER BY id")
APIS_SQL = ("SELECT id, workspace_id, host, prefix, upstream_url, strip_prefix, policy_id,"
            " timeout_seconds, max_body_bytes, upstream_headers FROM apis ORDER BY id")
KEYS_SQL = ("SELECT id, workspace_id, key_hash, policy_id,"
            " extract(epoch FROM expires_at)::float8 AS expires_at FROM api_keys"
            " WHERE revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now() - interval '1 day') ORDER BY id")


HOSTS_SQL = "SELECT host, workspace_id FROM route_hosts ORDER BY host"


def build_snapshot(policies, apis, keys, keyring: KeyRing | None,
                   hosts=()) -> Snapshot:
    """Rows -> Snapshot; the version is a digest of what the rows say. ``hosts``:
    route_hosts rows (route ownership, see Snapshot.host_owners)."""
    digest = hashlib.sha256()
    owners = {}
    for row in hosts:
        digest.update(orjson.dumps([row["host"], row["workspace_id"]]))
        owners[row["host"]] = row["workspace_id"]
    built_policies = []
    for row in policies:
        digest.update(orjson.dumps(list(row.values())))
        policy, problem = stored_policy(
            row["id"], row["workspace_id"], list(row["limits"]), scope=row["scope"],
            mode=row["mode"], algorithm=row["algorithm"], failure_mode=row["failure_mode"])
        if problem:
            log.warning("policy %s of workspace %s is out of today's bounds (%s); serving "
                        "%s until it is edited", policy.id, policy.workspace_id, problem,
                        ", ".join(map(str, policy.limits)))
        built_policies.append(policy)
    built_apis = []
    for row in apis:
        digest.update(orjson.dumps([row["id"], row["workspace_id"], row["host"], row["prefix"],
                                    row["upstream_url"], row["strip_prefix"], row["policy_id"],
                                    row["timeout_seconds"], row["max_body_bytes"],
                                    row["upstream_headers"]]))
        headers = []
        for name, sealed in sorted((row["upstream_headers"] or {}).items()):
            if keyring is None:
                raise ConfigError(f"api {row['id']}: has upstream credentials but "
                                  "ENCRYPTION_KEY is not set")
            try:
                value = keyring.decrypt(sealed, header_aad(row["id"], name))
            except CryptoError as exc:
                raise ConfigError(f"api {row['id']}: header {name}: {exc}") from None
            headers.append((name.encode(), value.encode()))
        built_apis.append(Api(
            id=row["id"], workspace_id=row["workspace_id"], prefix=row["prefix"],
            upstream=Upstream.parse(row["upstream_url"]), host=row["host"],
            strip_prefix=row["strip_prefix"], policy_id=row["policy_id"],
            timeout=row["timeout_seconds"], max_body_bytes=row["max_body_bytes"],
            upstream_headers=tuple(headers)))
    built_keys = []
    for row in keys:
        digest.update(orjson.dumps([row["id"], row["workspace_id"], row["key_hash"],
                                    row["policy_id"], row["expires_at"]]))
        built_keys.append(ApiKey(
            id=row["id"], workspace_id=row["workspace_id"], key_hash=row["key_hash"],
            policy_id=row["policy_id"], expires_at=row["expires_at"]))
    snapshot = Snapshot(tuple(built_apis), tuple(built_keys), tuple(built_policies),
                        host_owners=owners)
    for api in snapshot.unrouted:
        log.warning("config: api %s does not route: its workspace does not own host %s",
                    api.id, api.host or "*")
    object.__setattr__(snapshot, "version", digest.hexdigest()[:12])
    return snapshot


async def fetch_snapshot(conn: asyncpg.Connection, keyring: KeyRing | None) -> Snapshot:
    # One repeatable-read transaction: the three selects see the same moment.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        policies = await conn.fetch(POLICIES_SQL)
        apis = await conn.fetch(APIS_SQL)
        keys = await conn.fetch(KEYS_SQL)
        hosts = await conn.fetch(HOSTS_SQL)
    return build_snapshot(policies, apis, keys, keyring, hosts)


class PgSource:
    def __init__(self, dsn: str, keyring: KeyRing | None = None, *,
                 reload_interval: float = 30.0, debounce: float = 0.05) -> None:
        self.dsn = dsn
        self.keyring = keyring
        self.reload_interval = reload_interval
        self.debounce = debounce
        self.version: str | None = None
        self.reloads = 0
        self._conn: asyncpg.Connection | None = None
        self._changed = asyncio.Event()

    async def load(self) -> Snapshot:
        conn = await connect(self.dsn)
        try:
            snapshot = await fetch_snapshot(conn, self.keyring)
        except asyncpg.UndefinedTableError:
            raise RateGuardError("DATABASE_URL: the schema is missing; run "
                                 "`rateguard db migrate` first") from None
        finally:
            await conn.close()
        self.version = snapshot.version
        return snapshot

    def _on_notify(self, conn, pid, channel, payload) -> None:
        self._changed.set()

    def _on_lost(self, conn) -> None:
        self._changed.set()

    async def _listen(self) -> None:
        self._conn = await connect(self.dsn)
        self._conn.add_termination_listener(self._on_lost)
        await self._conn.add_listener(CHANNEL, self._on_notify)

    async def _close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.close(timeout=2)
            except Exception:
                self._conn.terminate()
        self._conn = None

    async def watch(self, apply: Callable[[Snapshot], None]) -> None:
        backoff = MIN_BACKOFF
        lost_at: float | None = None  # monotonic time the listener went away
        attempts = 0
        try:
            while True:
                if self._conn is None or self._conn.is_closed():
                    await self._close()
                    try:
                        await self._listen()
                    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                            RateGuardError) as exc:
                        attempts += 1
                        if lost_at is None:
                            lost_at = time.monotonic()
                            log.warning("config: cannot listen on PostgreSQL (%s); serving "
                                        "the last snapshot (version %s), reconnecting with "
                                        "backoff", exc, self.version)
                        else:
                            log.debug("config: reconnect attempt %d failed: %s", attempts, exc)
                        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, MAX_BACKOFF)
                        continue
                    if lost_at is not None:
                        log.warning("config: listening on %s again after %.1fs without "
                                    "PostgreSQL (%d failed attempts); reloading", CHANNEL,
                                    time.monotonic() - lost_at, attempts)
                    else:
                        log.info("config: listening on %s", CHANNEL)
                    backoff, lost_at, attempts = MIN_BACKOFF, None, 0
                    # Anything may have changed while we were not listening.
                    self._changed.set()
                try:
                    await asyncio.wait_for(self._changed.wait(), self.reload_interval)
                    await asyncio.sleep(self.debounce)  # let a burst of changes land
                except asyncio.TimeoutError:
                    pass
                self._changed.clear()
                if self._conn is None or self._conn.is_closed():
                    if lost_at is None:
                        lost_at = time.monotonic()
                        log.warning("config: lost the listening connection to PostgreSQL; "
                                    "serving the last snapshot (version %s), reconnecting "
                                    "with backoff", self.version)
                    continue
                await self._reload(apply)
        finally:
            await self._close()

    async def _reload(self, apply: Callable[[Snapshot], None]) -> None:
        try:
            snapshot = await asyncio.wait_for(fetch_snapshot(self._conn, self.keyring),
                                              RELOAD_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("config reload: PostgreSQL did not answer within %gs; dropping the "
                        "connection and reconnecting", RELOAD_TIMEOUT)
            self._conn.terminate()
            return
        except (ConfigError, asyncpg.PostgresError, OSError) as exc:
            if self._conn.is_closed():
                return  # the connection went away mid-reload: logged once by watch()
            log.error("config reload failed, keeping the last good one: %s", exc)
            return
        except asyncpg.InterfaceError as exc:
            log.debug("config reload: connection lost (%s)", exc)
            return
        self.reloads += 1
        if snapshot.version != self.version:
            self.version = snapshot.version
            apply(snapshot)
            log.info("config reloaded from PostgreSQL (version %s, %d APIs, %d keys)",
                     snapshot.version, len(snapshot.apis), len(snapshot.keys))
