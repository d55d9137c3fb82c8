"""Redis down: failure modes apply at once, with no per-request wait; recovery follows
within seconds of Redis returning; the state shows in metrics and in /readyz's detail
(readiness itself holds).

A dedicated Valkey is killed and restarted on the same port; the session Valkey other
tests use is never touched.
"""

from __future__ import annotations

import time

import orjson
import pytest

from rateguard.embedded.servers import EmbeddedValkey, free_port
from tests.faults.conftest import Keys, metric, wait_until
from tests.servers import fetch

pytestmark = pytest.mark.integration


async def timed(session, url, headers):
    started = time.monotonic()
    status, _, body = await fetch(session, "GET", url, headers=headers)
    return status, body, time.monotonic() - started


async def test_redis_outage_open_keeps_flowing_closed_answers_503_and_both_recover(
        workdir, start_proxy, upstream, session):
    port = free_port()
    valkey = EmbeddedValkey(workdir / "valkey-outage", port=port)
    redis_url = valkey.start()
    keys = Keys()
    config = {"workspaces": [{
        "id": "redisfault",
        "policies": [{"id": "open", "limits": ["1000/min"], "failure_mode": "open"},
                     {"id": "open-small", "limits": ["3/min"], "failure_mode": "open"},
                     {"id": "closed", "limits": ["1000/min"], "failure_mode": "closed"}],
        "apis": [{"id": "api", "prefix": "/", "upstream": upstream.url}],
        "keys": [keys.entry("open", policy="open"), keys.entry("small", policy="open-small"),
                 keys.entry("closed", policy="closed")]}]}
    try:
        proxy = start_proxy(config, "redisfault", REDIS_URL=redis_url, REDIS_TIMEOUT_MS="250")
        url = f"{proxy.url}/echo"
        metrics_url = f"http://127.0.0.1:{proxy.metrics_port}"
        for name in ("open", "closed"):
            status, _, _ = await timed(session, url, keys.auth(name))
            assert status == 200

        valkey.stop()  # Redis is gone
        down_at = time.monotonic()
        results = [await timed(session, url, keys.auth("open")) for _ in range(40)]
        assert [r[0] for r in results] == [200] * 40, "failure mode open must keep serving"
        slowest = max(r[2] for r in results[1:])
        assert slowest < 0.15, f"a dead Redis added {slowest:.3f}s to a request"

        status, body, took = await timed(session, url, keys.auth("closed"))
        assert status == 503 and took < 0.15
        assert orjson.loads(body)["error"] == "limiter_unavailable"

        # The local limiter applies the same policy (per replica) meanwhile.
        small = [(await timed(session, url, keys.auth("small")))[0] for _ in range(4)]
        assert small == [200, 200, 200, 429]

        # Still ready: every replica shares this Redis; failing the probe would take
        # them all out of the Service and no client would see the failure modes.
        status, _, body = await fetch(session, "GET", f"{metrics_url}/readyz")
        detail = orjson.loads(body)
        assert status == 200 and detail["ready"] is True and detail["redis"] == "down"
        _, _, text = await fetch(session, "GET", f"{metrics_url}/metrics")
        assert metric(text.decode(), "rateguard_redis_up") == 0
        assert time.monotonic() - down_at < 5

        valkey = EmbeddedValkey(workdir / "valkey-outage", port=port)
        valkey.start()
        back_at = time.monotonic()

        async def recovered():
            status, _, body = await fetch(session, "GET", f"{metrics_url}/readyz")
            return status == 200 and orjson.loads(body)["redis"] == "up"

        assert await wait_until(recovered, timeout=5, interval=0.1), "no recovery within 5s"
        assert time.monotonic() - back_at < 5
        _, _, text = await fetch(session, "GET", f"{metrics_url}/metrics")
        assert metric(text.decode(), "rateguard_redis_up") == 1
        status, _, _ = await timed(session, url, keys.auth("closed"))
        assert status == 200
        status, headers, _ = await fetch(session, "GET", url, headers=keys.auth("open"))
        assert status == 200 and int(headers["RateLimit-Limit"]) == 1000
        assert proxy.proc.poll() is None
        assert "Traceback" not in proxy.log()
    finally:
        valkey.stop()
