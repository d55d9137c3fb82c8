"""Every request's event lands in ClickHouse, once, with the right fields."""

from __future__ import annotations

import pytest

from tests.integration.conftest import wait_until
from tests.servers import fetch

pytestmark = pytest.mark.integration


async def test_every_request_lands_in_clickhouse_with_its_fields(gateway, session, analytics):
    auth = gateway.keys.auth("free")
    sent = {}
    for i in range(20):
        status, headers, _ = await fetch(
            session, "POST", f"{gateway.url}/echo/events/{i}?secret=q", headers={
                **auth, "User-Agent": "events-test/1.0"}, data=b"x" * i)
        assert status == 200
        sent[headers["X-Request-Id"]] = i
    status, headers, _ = await fetch(session, "GET", f"{gateway.url}/echo/events/denied",
                                     headers={"X-API-Key": "rg_wrong"})
    assert status == 401
    denied_id = headers["X-Request-Id"]

    clickhouse = analytics.clickhouse
    ids = list(sent) + [denied_id]

    async def landed():
        _, rows = await clickhouse.query(
            f"SELECT count() FROM {clickhouse.database}.api_events WHERE id IN {{ids:Array(String)}}",
            {"ids": ids})
        return rows[0][0] >= len(ids)

    assert await wait_until(landed, timeout=15), "events did not reach ClickHouse in time"
    columns, rows = await clickhouse.query(
        f"SELECT id, workspace_id, api_id, key_id, method, path, status, bytes_in, user_agent, "
        f"decision, policy_id, latency_ms, upstream_ms, client_ip, instance, "
        f"count() OVER (PARTITION BY id) "
        f"FROM {clickhouse.database}.api_events WHERE id IN {{ids:Array(String)}}", {"ids": ids})
    by_id = {row[0]: dict(zip(columns, row)) for row in rows}
    assert len(rows) == len(ids), "each event exactly once"
    for request_id, i in sent.items():
        event = by_id[request_id]
        assert event["workspace_id"] == "ws1" and event["api_id"] == "echo"
        assert event["key_id"] == "free" and event["method"] == "POST"
        assert event["path"] == f"/echo/events/{i}"  # no query string
        assert event["status"] == 200 and event["bytes_in"] == i
        assert event["user_agent"] == "events-test/1.0"
        assert event["decision"] == "allowed" and event["policy_id"] == "roomy"
        assert event["latency_ms"] > 0 and event["client_ip"] == "127.0.0.1"
        # The upstream's share, to the microsecond: a local upstream answers well within
        # a millisecond, which a millisecond clock would record as 0.
        assert 0 < event["upstream_ms"] < event["latency_ms"], event
        assert event["instance"]
    denied = by_id[denied_id]
    assert denied["decision"] == "unauthorized" and denied["status"] == 401
    assert denied["key_id"] == ""

    _, rows = await clickhouse.query(
        f"SELECT sum(requests) FROM {clickhouse.database}.api_events_minute "
        "WHERE workspace_id = 'ws1' AND api_id = 'echo'")
    assert rows[0][0] >= len(sent)  # the per-minute rollup follows
