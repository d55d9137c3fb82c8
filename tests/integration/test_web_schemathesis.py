"""schemathesis against `rateguard web` (a real process on a real PostgreSQL and its own
embedded ClickHouse), driven by the OpenAPI document the server itself serves: no
response may be a 5xx, use an undocumented status or content type, or break its schema.

Generated requests carry a signed-in owner's token and, in place of the generated
workspace id, that owner's real workspace, so they reach the handlers and validation
rather than stopping at 404. The example count is kept small for a fast suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid

import aiohttp
import pytest
import pytest_asyncio
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_schema_conformance,
    status_code_conformance,
)

from rateguard.db.migrate import migrate
from rateguard.embedded.servers import free_port, stop_process, wait_for_port
from tests.integration.control import ENCRYPTION_KEY, JWT_SECRET

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest_asyncio.fixture(scope="module")
async def served(new_database, workdir):
    database_url = await new_database()
    await migrate(database_url)
    clickhouse = workdir / "clickhouse-web"
    clickhouse.mkdir(exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if k not in ("KAFKA_BROKERS",)},
           "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET,
           "ENCRYPTION_KEY": ENCRYPTION_KEY, "CLICKHOUSE_URL": f"chdb://{clickhouse}",
           "CLICKHOUSE_DATABASE": "rateguard", "RATEGUARD_ENV": "development",
           # every operation that ends sessions runs on a new account's session
           "SIGNUP_RATE_LIMIT_IP": "100000/h"}
    subprocess.run([sys.executable, "-m", "rateguard", "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    port = free_port()
    with open(workdir / "web-schemathesis.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rateguard", "web", "--host",
                                 "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 20, "rateguard web", proc)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/api/v1/auth/signup", json={
                    "email": "fuzz@example.com", "password": "fuzzing password"}) as response:
                assert response.status == 201
                session = await response.json()
            auth = {"Authorization": f"Bearer {session['access_token']}"}
            workspace = session["workspace"]["id"]
            # Something in every list, so list answers are checked with content.
            for kind, body in (
                    ("policies", {"name": "p", "limits": ["5/s"]}),
                    ("apis", {"name": "a", "prefix": "/a", "upstream_url": "http://127.0.0.1:1",
                              "upstream_headers": {"X-Token": "t"}}),
                    ("keys", {"name": "k", "expires_at": "2099-01-01T00:00:00Z"}),
                    ("invitations", {"email": "guest@example.com", "role": "viewer"})):
                async with http.post(f"{base}/api/v1/workspaces/{workspace}/{kind}",
                                     headers=auth, json=body) as response:
                    assert response.status == 201, await response.text()
        yield {"base": base, "auth": auth, "workspace": workspace,
               "refresh": session["refresh_token"]}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def openapi(served):
    return schemathesis.openapi.from_url(served["base"] + "/api/v1/openapi.json")


def operations() -> list[tuple[str, str]]:
    """What the served document lists (it is built from this table)."""
    from rateguard.web.api import registry

    app = web.Application()
    registry.add_routes(app)  # imports every module that declares operations
    return [(op.method, registry.PREFIX + op.path) for op in registry.OPERATIONS]


# Operations that end the caller's session(s); schemathesis_hooks.py names the same ones
# (not imported from there: importing it would register its hooks in this process too).
SESSION_ENDING = ("logout", "logout_all", "end_session")


def throwaway_auth(base: str) -> dict:
    """A new account's session, for an operation that ends sessions (logout, sign out
    everywhere, end a session): the owner's session, which the other cases use, stays."""
    email = f"throwaway-{uuid.uuid4().hex[:12]}@example.com"
    request = urllib.request.Request(
        base + "/api/v1/auth/signup", method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"email": email, "password": "throwaway password"}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return {"Authorization": f"Bearer {json.load(response)['access_token']}"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
@pytest.mark.parametrize("method,path", operations(), ids=lambda v: v)
def test_the_served_api_matches_its_openapi_document(openapi, served, method, path, mode):
    operation = openapi[path][method]
    fixed = {"workspace_id": served["workspace"]} if "{workspace_id}" in path else None
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)
    ends_sessions = operation.definition.raw.get("operationId") in SESSION_ENDING

    @given(case=strategy)
    @settings(max_examples=4, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def check(case):
        headers = throwaway_auth(served["base"]) if ends_sessions else served["auth"]
        case.call_and_validate(base_url=served["base"], headers=headers, checks=CHECKS)

    check()


# Every check but those about the server's own freedom of answer: "ignored_auth" would flag
# the public operations (their documented security is empty), and the latency budget
# belongs to the benchmarks.
PHASE_CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance,positive_data_acceptance,"
                "use_after_free,ensure_resource_availability")


def test_schemathesis_coverage_fuzzing_and_stateful_phases(served, workdir):
    """`schemathesis run` with its coverage, fuzzing and stateful phases, an auth hook
    that refreshes tokens (schemathesis_hooks.py), every operation (those that end
    sessions on a new account's session); any failure, including positive data the
    server refuses, fails the test."""
    report = os.environ.get("RATEGUARD_ST_LOG") or workdir / "schemathesis-phases.txt"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
           "RG_ST_BASE": served["base"], "RG_ST_REFRESH": served["refresh"],
           "RG_ST_WORKSPACE": served["workspace"]}
    config = os.path.join(os.path.dirname(__file__), "schemathesis.toml")
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", config, "run",
               served["base"] + "/api/v1/openapi.json",
               "--phases", "examples,coverage,fuzzing,stateful",
               "--checks", PHASE_CHECKS,
               "--max-examples", os.environ.get("RATEGUARD_ST_EXAMPLES", "5"),
               "--generation-deterministic", "--workers", "2",
               "--suppress-health-check", "all", "--no-color",
               *os.environ.get("RATEGUARD_ST_ARGS", "").split()]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    with open(report, "w") as out:
        out.write(result.stdout + result.stderr)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"schemathesis found failures (full log {report}):\n{tail}"
