"""The alerts worker end to end: real traffic through a real proxy (following
PostgreSQL), events through Kafka into ClickHouse, rules evaluated by the worker, and
notifications received by a real webhook receiver and a real SMTP server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import orjson
import socket

import pytest
import pytest_asyncio

from rateguard.alerts import notify
from rateguard.alerts.worker import AlertsWorker
from rateguard.settings import Settings
from tests.integration.alerting import Mailbox, Receiver
from tests.integration.conftest import unique, wait_until
from tests.integration.control import ENCRYPTION_KEY, ControlPlane, PgProxy
from tests.servers import fetch

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_" + "k" * 32


@pytest_asyncio.fixture(scope="module")
async def plane(new_database, analytics, env):
    control = ControlPlane(await new_database(), analytics.clickhouse,
                           env["CLICKHOUSE_DATABASE"], usage_interval=3600)
    await control.start()
    yield control
    await control.stop()


@pytest.fixture(scope="module")
def proxy(plane, env, workdir):
    process = PgProxy(plane.database_url, env, workdir, unique("alerts-proxy")).start()
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module")
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def mailbox(workdir):
    server = Mailbox(workdir, "alerts-user", "smtp pass word").start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def workers(plane, analytics, env):
    """workers(**options) -> a started AlertsWorker on the test database."""
    started: list[AlertsWorker] = []
    settings = Settings.from_env({**env, "DATABASE_URL": plane.database_url,
                                  "ENCRYPTION_KEY": ENCRYPTION_KEY,
                                  "ALERTS_INTERVAL_SECONDS": "0.5"})

    async def make(**options) -> AlertsWorker:
        options = {"leader_poll": 0.3, "retry_base": 0.4, "delivery_timeout": 5.0,
                   **options}
        worker = AlertsWorker(settings, clickhouse=analytics.clickhouse, **options)
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.stop()


class Tenant:
    def __init__(self, plane, owner, api, key) -> None:
        self.plane, self.owner, self.api, self.key = plane, owner, api, key
        self.base = f"/workspaces/{owner.workspace_id}"

    async def call(self, method: str, tail: str, json=...):
        return await self.plane.call(method, self.base + tail, self.owner, json=json)

    async def channel(self, **body) -> dict:
        status, made = await self.call("POST", "/alerts/channels", json=body)
        assert status == 201, made
        return made

    async def rule(self, **body) -> dict:
        status, made = await self.call("POST", "/alerts/rules", json=body)
        assert status == 201, made
        return made


@pytest_asyncio.fixture
async def tenant(plane, upstream, proxy, session):
    owner = await plane.signup("alerts")
    base = f"/workspaces/{owner.workspace_id}"
    status, api = await plane.call("POST", base + "/apis", owner, json={
        "name": "orders", "prefix": "/" + unique("orders"), "upstream_url": upstream.url})
    assert status == 201, api
    status, key = await plane.call("POST", base + "/keys", owner, json={"name": "k"})
    assert status == 201, key
    tenant = Tenant(plane, owner, api, key["key"])

    async def reachable():
        got, _, _ = await fetch(session, "GET", f"{proxy.url}{api['prefix']}/ping",
                                headers={"X-API-Key": tenant.key})
        return got == 200
    assert await wait_until(reachable, timeout=5)
    return tenant


async def traffic(session, proxy, tenant, path: str, seconds: float, per_tick: int = 8):
    """Send requests to the tenant's API through the proxy for ``seconds``."""
    deadline = time.monotonic() + seconds
    statuses: list[int] = []
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(
            fetch(session, "GET", f"{proxy.url}{tenant.api['prefix']}{path}",
                  headers={"X-API-Key": tenant.key}) for _ in range(per_tick)))
        statuses += [status for status, _, _ in results]
        await asyncio.sleep(0.1)
    return statuses


def decoded(entries: list[dict]) -> list[dict]:
    return [orjson.loads(entry["body"]) for entry in entries]


async def test_an_error_rate_rule_fires_once_and_resolves_once_on_every_channel(
        plane, proxy, receiver, mailbox, workers, tenant, session):
    hook, slack = "/" + unique("hook"), "/" + unique("slack")
    webhook = await tenant.channel(name="ops hook", kind="webhook", url=receiver.url(hook),
                                   secret=WEBHOOK_SECRET)
    slack_channel = await tenant.channel(name="ops slack", kind="slack",
                                         url=receiver.url(slack))
    mail = await tenant.channel(name="ops mail", kind="smtp", host="127.0.0.1",
                                port=mailbox.port, starttls=True, tls_verify=False,
                                username="alerts-user", password="smtp pass word",
                                **{"from": "alerts@rateguard.test", "to": ["ops@example.com"]})
    assert webhook["has_secret"] and "secret" not in webhook  # given, so not echoed
    assert "url" not in slack_channel["config"] and "password" not in mail["config"]
    rule = await tenant.rule(name="orders 5xx", metric="error_rate", comparator="above",
                             threshold=0.5, window_seconds=3, for_seconds=1,
                             api_id=tenant.api["id"],
                             channel_ids=[webhook["id"], slack_channel["id"], mail["id"]])
    await workers()

    # Everything fails upstream: the rule goes pending, then fires after 1 s.
    started = time.monotonic()
    while not receiver.received[hook] and time.monotonic() - started < 20:
        await traffic(session, proxy, tenant, "/status/503", 0.5)
    assert receiver.received[hook], "no firing notification within 20 s"

    async def all_channels(count: int):
        return (len(receiver.received[hook]) >= count and len(receiver.received[slack]) >= count
                and len(mailbox.messages) >= count)
    assert await wait_until(lambda: all_channels(1), timeout=10)

    # Traffic recovers: once the errors leave the 3 s window the rule resolves.
    started = time.monotonic()
    while len(receiver.received[hook]) < 2 and time.monotonic() - started < 20:
        await traffic(session, proxy, tenant, "/ok", 0.5)
    assert await wait_until(lambda: all_channels(2), timeout=10)
    await asyncio.sleep(1.5)  # three more evaluations: nothing else is sent

    assert len(receiver.received[hook]) == 2
    assert len(receiver.received[slack]) == 2
    assert len(mailbox.messages) == 2
    firing, resolved = decoded(receiver.received[hook])
    assert (firing["event"], firing["status"], firing["previous_status"]) == \
        ("alert.firing", "firing", "pending")
    assert (resolved["event"], resolved["status"], resolved["previous_status"]) == \
        ("alert.resolved", "resolved", "firing")
    assert firing["rule"] == {
        "id": rule["id"], "name": "orders 5xx", "workspace_id": tenant.owner.workspace_id,
        "api_id": tenant.api["id"], "metric": "error_rate", "comparator": "above",
        "threshold": 0.5, "window_seconds": 3, "for_seconds": 1}
    assert firing["value"] > 0.5 and resolved["value"] <= 0.5
    assert firing["transition"]["seq"] < resolved["transition"]["seq"]
    for entry in receiver.received[hook]:
        headers = entry["headers"]
        assert notify.verify(WEBHOOK_SECRET, entry["body"], headers["X-RateGuard-Signature"])
        assert headers["Content-Type"] == "application/json"
        assert headers["X-RateGuard-Delivery"]
    assert not notify.verify("another secret entirely!", receiver.received[hook][0]["body"],
                             receiver.received[hook][0]["headers"]["X-RateGuard-Signature"])
    slack_texts = [body["text"] for body in decoded(receiver.received[slack])]
    assert slack_texts[0].startswith("[FIRING] orders 5xx: error_rate ")
    assert slack_texts[1].startswith("[RESOLVED] orders 5xx: error_rate ")
    subjects = [message["Subject"] for message in mailbox.messages]
    assert subjects[0].startswith("[FIRING] orders 5xx") and \
        subjects[1].startswith("[RESOLVED] orders 5xx")
    assert mailbox.envelopes[0] == ("alerts@rateguard.test", ["ops@example.com"])
    assert '"event": "alert.firing"' in mailbox.messages[0].get_content()

    # State, history and deliveries, through the management API.
    status, current = await tenant.call("GET", f"/alerts/rules/{rule['id']}")
    assert status == 200 and current["state"] == "resolved"
    status, history = await tenant.call("GET", f"/alerts/history?rule_id={rule['id']}")
    assert [(h["from_state"], h["to_state"]) for h in reversed(history["items"])] == [
        ("ok", "pending"), ("pending", "firing"), ("firing", "resolved")]
    status, deliveries = await tenant.call("GET", "/alerts/deliveries")
    assert sorted((d["kind"], d["status"], d["attempts"]) for d in deliveries["items"]) == \
        [("firing", "delivered", 1)] * 3 + [("resolved", "delivered", 1)] * 3
    assert all(d["attempt_log"][0]["ok"] for d in deliveries["items"])


async def test_a_failing_channel_is_retried_with_backoff_and_does_not_delay_the_others(
        receiver, workers, tenant):
    flaky, slow, good = ("/" + unique(name) for name in ("flaky", "slow", "good"))
    receiver.fail[flaky] = 2
    receiver.delay[slow] = 2.0
    channels = [await tenant.channel(name=name, kind="webhook", url=receiver.url(path),
                                     secret=WEBHOOK_SECRET)
                for name, path in (("flaky", flaky), ("slow", slow), ("good", good))]
    # No traffic at all: "fewer than one request in 2 s" holds at the first evaluation.
    await tenant.rule(name="silence", metric="request_count", comparator="below", threshold=1,
                      window_seconds=2, channel_ids=[c["id"] for c in channels])
    await asyncio.sleep(2.2)  # the reachability probe leaves the 2 s window
    await workers(retry_base=0.4)

    assert await wait_until(lambda: _has(receiver, flaky, 1), timeout=15)
    assert await wait_until(lambda: _has(receiver, slow, 1), timeout=10)
    assert len(receiver.received[good]) == 1
    # The good channel did not wait for the slow one nor for the flaky one's retries.
    assert receiver.received[good][0]["at"] < receiver.received[slow][0]["at"] - 1.0
    assert receiver.received[good][0]["at"] < receiver.attempts[flaky][1]
    # Three attempts, exponential backoff: the second wait is about twice the first.
    first, second, third = receiver.attempts[flaky]
    assert 0.35 <= second - first < 2.0 and second - first < third - second
    assert len(receiver.received[flaky]) == 1
    ids = {entry["headers"]["X-RateGuard-Delivery"] for entry in receiver.received[flaky]}
    status, deliveries = await tenant.call("GET", "/alerts/deliveries")
    flaky_delivery = next(d for d in deliveries["items"] if d["channel_id"] == channels[0]["id"])
    assert str(flaky_delivery["id"]) in ids
    assert (flaky_delivery["status"], flaky_delivery["attempts"]) == ("delivered", 3)
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in flaky_delivery["attempt_log"]] \
        == [(1, False, 500), (2, False, 500), (3, True, 200)]
    await asyncio.sleep(1.0)
    assert len(receiver.received[flaky]) == len(receiver.received[good]) == 1


async def _has(receiver, path: str, count: int) -> bool:
    return len(receiver.received[path]) >= count


async def test_killing_the_leader_hands_over_without_a_duplicate_notification(
        plane, proxy, receiver, workers, tenant, session):
    hook = "/" + unique("handover")
    channel = await tenant.channel(name="hook", kind="webhook", url=receiver.url(hook),
                                   secret=WEBHOOK_SECRET)
    await tenant.rule(name="silence", metric="request_count", comparator="below", threshold=1,
                      window_seconds=2, api_id=tenant.api["id"], channel_ids=[channel["id"]])
    await asyncio.sleep(2.2)  # the reachability probe leaves the 2 s window
    first, second = await workers(), await workers()

    async def one_leader():
        return [first.is_leader, second.is_leader].count(True) == 1 and \
            "standby" in (first.role, second.role)
    assert await wait_until(one_leader, timeout=5)
    leader, standby = (first, second) if first.is_leader else (second, first)
    assert await wait_until(lambda: _has(receiver, hook, 1), timeout=10)
    await asyncio.sleep(1.0)  # the leader goes on evaluating: still one notification
    assert len(receiver.received[hook]) == 1

    # Kill the leader as a crash would: its connection drops, its tasks stop, no cleanup.
    leader._conn.terminate()
    leader._task.cancel()
    killed_at = time.monotonic()
    assert await wait_until(lambda: _is_leader(standby), timeout=5)
    assert time.monotonic() - killed_at < 3.0
    await asyncio.sleep(1.5)  # the new leader has evaluated the firing rule several times
    assert len(receiver.received[hook]) == 1

    # Traffic comes back: the new leader sends the one resolved notification.
    await traffic(session, proxy, tenant, "/ok", 1.0, per_tick=2)
    assert await wait_until(lambda: _has(receiver, hook, 2), timeout=10)
    await asyncio.sleep(1.0)
    events = [body["event"] for body in decoded(receiver.received[hook])]
    assert events == ["alert.firing", "alert.resolved"]
    deliveries = {entry["headers"]["X-RateGuard-Delivery"]
                  for entry in receiver.received[hook]}
    assert len(deliveries) == 2


async def _is_leader(worker) -> bool:
    return worker.is_leader


async def test_send_test_notification_endpoint_reports_and_records_the_attempt(
        receiver, tenant):
    hook = "/" + unique("test")
    channel = await tenant.channel(name="t", kind="webhook", url=receiver.url(hook))
    secret = channel["secret"]
    assert secret.startswith("whsec_")
    status, result = await tenant.call("POST", f"/alerts/channels/{channel['id']}/test")
    assert status == 200 and result["ok"] and result["status_code"] == 200
    [entry] = receiver.received[hook]
    assert orjson.loads(entry["body"])["event"] == "test"
    assert notify.verify(secret, entry["body"], entry["headers"]["X-RateGuard-Signature"])

    dead = await tenant.channel(name="dead", kind="webhook", url="http://127.0.0.1:9/x")
    status, result = await tenant.call("POST", f"/alerts/channels/{dead['id']}/test")
    assert status == 200 and not result["ok"] and result["error"]
    status, deliveries = await tenant.call("GET", "/alerts/deliveries")
    tests = {d["channel_id"]: d for d in deliveries["items"] if d["kind"] == "test"}
    assert tests[channel["id"]]["status"] == "delivered"
    assert tests[dead["id"]]["status"] == "failed"
    assert tests[dead["id"]]["attempt_log"][0]["error"]


async def test_a_leader_stopped_mid_delivery_finishes_it_and_nothing_is_sent_twice(
        receiver, workers, tenant):
    hook = "/" + unique("graceful")
    receiver.delay[hook] = 1.5
    channel = await tenant.channel(name="slow", kind="webhook", url=receiver.url(hook))
    await tenant.rule(name="silence", metric="request_count", comparator="below", threshold=1,
                      window_seconds=2, api_id=tenant.api["id"], channel_ids=[channel["id"]])
    await asyncio.sleep(2.2)  # the reachability probe leaves the 2 s window
    first = await workers()
    assert await wait_until(lambda: _is_leader(first), timeout=5)
    second = await workers()

    async def sending():
        return bool(receiver.attempts[hook])
    assert await wait_until(sending, timeout=10)
    await first.stop()  # SIGTERM during the send: it finishes and is recorded first
    assert len(receiver.received[hook]) == 1
    assert await wait_until(lambda: _is_leader(second), timeout=5)
    await asyncio.sleep(1.5)
    assert len(receiver.attempts[hook]) == len(receiver.received[hook]) == 1


async def test_rules_and_channels_are_validated_and_scoped_to_the_workspace(plane, tenant):
    other = await plane.signup("alerts-other")
    status, foreign = await plane.call(
        "POST", f"/workspaces/{other.workspace_id}/alerts/channels", other,
        json={"name": "theirs", "kind": "webhook", "url": "https://example.com/hook"})
    assert status == 201
    rule = {"name": "r", "metric": "p95_latency", "comparator": "above", "threshold": 500,
            "window_seconds": 60}
    for bad, field in [({"metric": "cpu"}, "metric"), ({"threshold": -1}, "threshold")]:
        status, error = await tenant.call("POST", "/alerts/rules", json={**rule, **bad})
        assert (status, error["field"]) == (422, field), error
    # ids that name nothing in this workspace: 409, naming the field
    for bad, field in [({"channel_ids": [foreign["id"]]}, "channel_ids"),
                       ({"api_id": "api_nope"}, "api_id")]:
        status, error = await tenant.call("POST", "/alerts/rules", json={**rule, **bad})
        assert (status, error["field"]) == (409, field), error
    status, _ = await tenant.call("POST", f"/alerts/channels/{foreign['id']}/test")
    assert status == 404
    viewer = await plane.member(tenant.owner, "viewer")
    status, _ = await plane.call("POST", tenant.base + "/alerts/rules", viewer, json=rule)
    assert status == 403
    made = await tenant.rule(**rule)
    status, listed = await plane.call("GET", tenant.base + "/alerts/rules", viewer)
    assert status == 200 and made["id"] in [r["id"] for r in listed["items"]]
    status, _ = await tenant.call("DELETE", f"/alerts/rules/{made['id']}")
    assert status == 204
    status, _ = await tenant.call("GET", f"/alerts/rules/{made['id']}")
    assert status == 404
    status, document = await plane.call("GET", "/openapi.json")
    for path in ("/alerts/rules", "/alerts/channels/{channel_id}/test", "/alerts/history",
                 "/alerts/deliveries"):
        assert "/api/v1/workspaces/{workspace_id}" + path in document["paths"]


async def test_cli_manages_rules_and_sends_a_test_notification(plane, receiver, tenant):
    hook = "/" + unique("cli")
    channel = await tenant.channel(name="cli", kind="webhook", url=receiver.url(hook))
    # The receiver is on 127.0.0.1: a development instance (production refuses loopback
    # destinations, test sends included, unless ALLOW_PRIVATE_UPSTREAMS).
    env = {**os.environ, "DATABASE_URL": plane.database_url, "ENCRYPTION_KEY": ENCRYPTION_KEY,
           "RATEGUARD_ENV": "development"}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rateguard", "alerts", *args, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("rules", "create", "--workspace", tenant.owner.workspace_id,
                               "--name", "slow orders", "--metric", "p99_latency",
                               "--above", "800", "--window", "120", "--for", "30",
                               "--channel", channel["id"])
    assert code == 0, err
    rule_id = out.split()[0]
    assert rule_id.startswith("rule_") and "p99_latency above 800 over 120s" in out
    code, out, err = await cli("rules", "list", "--workspace", tenant.owner.workspace_id)
    assert code == 0 and rule_id in out and "800 ms" in out
    code, out, err = await cli("test", channel["id"])
    assert code == 0 and "delivered" in out, err
    assert orjson.loads(receiver.received[hook][0]["body"])["event"] == "test"
    code, out, err = await cli("rules", "delete", rule_id)
    assert code == 0
    code, out, err = await cli("rules", "delete", rule_id)
    assert code == 2 and err.startswith("error: rule not found")
    code, out, err = await cli("rules", "create", "--workspace", tenant.owner.workspace_id,
                               "--name", "x", "--metric", "error_rate", "--above", "5",
                               "--window", "60")
    assert code == 2 and err.count("\n") == 1 and "threshold" in err


async def test_channels_to_metadata_or_private_addresses_are_refused():
    """The proxy's SSRF guard applies to alert webhooks: cloud metadata is never called;
    with the production guard (the alerts worker in production without
    ALLOW_PRIVATE_UPSTREAMS), private and loopback addresses neither."""
    from rateguard.alerts.notify import refused_destination
    from rateguard.alerts.store import _url
    from rateguard.db.errors import Invalid
    from rateguard.snapshot.model import STRICT

    with pytest.raises(Invalid, match="link-local"):
        _url({"url": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(Invalid, match="metadata"):
        _url({"url": "http://metadata.google.internal/x"})
    assert "metadata" in await refused_destination("http://metadata.google.internal/x")
    assert await refused_destination("http://127.0.0.1:9/hook") is None
    assert "private or loopback" in await refused_destination("http://127.0.0.1:9/hook", STRICT)
    host = socket.gethostname()  # a name that resolves to a private address here
    assert "private or loopback" in await refused_destination(f"http://{host}:9/x", STRICT)
