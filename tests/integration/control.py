"""Helpers for the control-plane tests: the web app on a fresh migrated database, an
API client that signs up users, and `rateguard proxy` following PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid

import aiohttp

from rateguard.db.migrate import migrate
from rateguard.embedded.servers import free_port, wait_for_port
from rateguard.web.app import build_app, start
from tests.servers import ProxyProcess

JWT_SECRET = "test-jwt-secret-" + "x" * 32
ENCRYPTION_KEY = "test encryption passphrase long enough to use"


class Account:
    def __init__(self, email: str, password: str, session: dict) -> None:
        self.email = email
        self.password = password
        self.user_id = session["user"]["id"]
        self.workspace_id = session.get("workspace", {}).get("id")
        self.access = session["access_token"]
        self.refresh = session["refresh_token"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


class ControlPlane:
    """The web app in this process (and event loop), on its own fresh database."""

    def __init__(self, database_url: str, clickhouse=None, clickhouse_db: str = "rateguard",
                 **options) -> None:
        self.database_url = database_url
        self.app_redis_url = options.get("redis_url")
        self.app = build_app(database_url, JWT_SECRET, encryption_key=ENCRYPTION_KEY,
                             clickhouse=clickhouse, clickhouse_database=clickhouse_db,
                             **options)
        self.port = free_port()
        self.runner = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    async def start(self) -> "ControlPlane":
        await migrate(self.database_url)
        self.runner = await start(self.app, "127.0.0.1", self.port)
        self.http = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()

    async def call(self, method: str, path: str, account: Account | None = None, json=...,
                   headers: dict | None = None, data=None, params=None):
        """(status, parsed JSON or None)."""
        all_headers = dict(account.headers if account else {})
        all_headers.update(headers or {})
        kwargs = {"headers": all_headers, "params": params}
        if json is not ...:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        async with self.http.request(method, self.api + path, **kwargs) as response:
            body = await response.read()
            if response.content_type == "application/json" and body:
                return response.status, await response.json()
            return response.status, None

    async def assign_host(self, host: str, workspace_id: str) -> None:
        """What `rateguard hosts assign HOST WORKSPACE` does (route ownership)."""
        from rateguard.db.connection import create_pool
        from rateguard.db.repository import Actor, Repository

        pool = await create_pool(self.database_url, min_size=1, max_size=1)
        try:
            await Repository(pool).assign_host(Actor.cli(), host, workspace_id)
        finally:
            await pool.close()

    async def signup(self, prefix: str = "user", **extra) -> Account:
        email = f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"
        password = "correct horse battery"
        status, body = await self.call("POST", "/auth/signup",
                                       json={"email": email, "password": password, **extra})
        assert status == 201, body
        return Account(email, password, body)

    async def member(self, owner: Account, role: str) -> Account:
        """A new user who joined owner's workspace with ``role`` through an invitation."""
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        status, invitation = await self.call(
            "POST", f"/workspaces/{owner.workspace_id}/invitations", owner,
            json={"email": email, "role": role})
        assert status == 201, invitation
        status, body = await self.call("POST", "/auth/signup", json={
            "email": email, "password": "correct horse battery",
            "invitation": invitation["token"]})
        assert status == 201, body
        account = Account(email, "correct horse battery", body)
        assert account.workspace_id == owner.workspace_id and body["workspace"]["role"] == role
        return account


class PgProxy(ProxyProcess):
    """`rateguard proxy` with DATABASE_URL and no --config: the PostgreSQL source."""

    def __init__(self, database_url: str, env: dict[str, str], workdir, name: str) -> None:
        super().__init__({}, {**env, "DATABASE_URL": database_url,
                              "ENCRYPTION_KEY": ENCRYPTION_KEY}, workdir, name)
        self.env.pop("RATEGUARD_CONFIG", None)

    def start(self) -> "PgProxy":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rateguard", "proxy"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 20, f"proxy (log {self.log_path})", self.proc)
        self.wait_ready()
        return self
