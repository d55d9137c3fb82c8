"""Deleting something while another request names it: the loser of the race gets a
409 (the delete: the policy is in use; the reference: it names nothing any more,
with the field), never a 500, and a delete that answered 204 never coexists with a reference
that answered 201 (issue 21). Each race runs many times, several at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import pytest_asyncio


pytestmark = pytest.mark.integration

ROUNDS = 24
AT_ONCE = 8


@pytest_asyncio.fixture(scope="module")
async def owner(plane):
    return await plane.signup("racer")


def base(owner) -> str:
    return f"/workspaces/{owner.workspace_id}"


async def created(plane, owner, tail: str, body: dict) -> dict:
    status, out = await plane.call("POST", base(owner) + tail, owner, json=body)
    assert status == 201, out
    return out


async def race(plane, owner, setup, delete, reference, allowed_delete, allowed_reference):
    """Runs ROUNDS races, AT_ONCE at a time; returns [(delete status, reference status,
    ids)]."""
    outcomes = []

    def call(method, path, body):
        return plane.call(method, path, owner, json=body)

    async def one(i: int):
        ids = await setup(i)
        (d_status, d_body), (r_status, r_body) = await asyncio.gather(
            plane.call("DELETE", delete(ids), owner),
            call(*reference(ids, i)))
        assert d_status in allowed_delete, (d_status, d_body)
        assert r_status in allowed_reference, (r_status, r_body)
        outcomes.append((d_status, r_status, ids, r_body))

    for start in range(0, ROUNDS, AT_ONCE):
        await asyncio.gather(*(one(i) for i in range(start, min(start + AT_ONCE, ROUNDS))))
    return outcomes


def policy_setup(plane, owner):
    async def setup(i):
        return {"policy": (await created(plane, owner, "/policies",
                                         {"name": f"p{i}", "limits": ["5/s"]}))["id"]}
    return setup


async def test_deleting_a_policy_while_a_key_names_it(plane, owner):
    outcomes = await race(
        plane, owner, policy_setup(plane, owner),
        lambda ids: f"{base(owner)}/policies/{ids['policy']}",
        lambda ids, i: ("POST", base(owner) + "/keys",
                        {"name": f"k{i}", "policy_id": ids["policy"]}),
        {204, 409}, {201, 409})
    for deleted, referenced, ids, body in outcomes:
        assert (deleted, referenced) in ((204, 409), (409, 201)), (deleted, referenced)
        if referenced == 409:
            assert body["field"] == "policy_id"


async def test_deleting_a_policy_while_an_api_names_it(plane, owner):
    outcomes = await race(
        plane, owner, policy_setup(plane, owner),
        lambda ids: f"{base(owner)}/policies/{ids['policy']}",
        lambda ids, i: ("POST", base(owner) + "/apis",
                        {"name": f"a{i}", "prefix": f"/race-create-{i}",
                         "upstream_url": "http://127.0.0.1:1", "policy_id": ids["policy"]}),
        {204, 409}, {201, 409})
    for deleted, referenced, _ids, body in outcomes:
        assert (deleted, referenced) in ((204, 409), (409, 201))
        assert referenced == 201 or body["field"] == "policy_id", body


async def test_deleting_a_policy_while_an_api_is_patched_to_it(plane, owner):
    async def setup(i):
        ids = await policy_setup(plane, owner)(i)
        ids["api"] = (await created(plane, owner, "/apis", {
            "name": f"a{i}", "prefix": f"/race-patch-{i}",
            "upstream_url": "http://127.0.0.1:1"}))["id"]
        return ids

    outcomes = await race(
        plane, owner, setup,
        lambda ids: f"{base(owner)}/policies/{ids['policy']}",
        lambda ids, i: ("PATCH", f"{base(owner)}/apis/{ids['api']}",
                        {"policy_id": ids["policy"]}),
        {204, 409}, {200, 409})
    for deleted, referenced, _ids, body in outcomes:
        assert (deleted, referenced) in ((204, 409), (409, 200))
        assert referenced == 200 or body["field"] == "policy_id", body


async def test_deleting_an_api_while_a_rule_names_it(plane, owner):
    async def setup(i):
        return {"api": (await created(plane, owner, "/apis", {
            "name": f"a{i}", "prefix": f"/race-rule-{i}",
            "upstream_url": "http://127.0.0.1:1"}))["id"]}

    outcomes = await race(
        plane, owner, setup,
        lambda ids: f"{base(owner)}/apis/{ids['api']}",
        lambda ids, i: ("POST", base(owner) + "/alerts/rules", {
            "name": f"r{i}", "metric": "request_count", "comparator": "above", "threshold": 1,
            "window_seconds": 60, "api_id": ids["api"]}),
        {204}, {201, 409})
    # The API is gone either way; a rule made just before the delete went with it.
    for _deleted, referenced, _ids, body in outcomes:
        assert referenced == 201 or body["field"] == "api_id", body
        if referenced == 201:
            status, _ = await plane.call("GET", f"{base(owner)}/alerts/rules/{body['id']}",
                                         owner)
            assert status == 404


async def test_deleting_a_channel_while_a_rule_names_it(plane, owner):
    async def setup(i):
        return {"channel": (await created(plane, owner, "/alerts/channels", {
            "name": f"c{i}", "kind": "webhook",
            "url": "https://hooks.example.com/x"}))["id"]}

    outcomes = await race(
        plane, owner, setup,
        lambda ids: f"{base(owner)}/alerts/channels/{ids['channel']}",
        lambda ids, i: ("POST", base(owner) + "/alerts/rules", {
            "name": f"rc{i}", "metric": "request_count", "comparator": "above", "threshold": 1,
            "window_seconds": 60, "channel_ids": [ids["channel"]]}),
        {204}, {201, 409})
    for _deleted, referenced, ids, body in outcomes:
        assert referenced == 201 or body["field"] == "channel_ids", body
        if referenced == 201:
            status, rule = await plane.call(
                "GET", f"{base(owner)}/alerts/rules/{body['id']}", owner)
            assert status == 200 and ids["channel"] not in rule["channel_ids"]


async def test_revoking_a_key_while_it_is_rolled(plane, owner):
    async def one(i):
        key = await created(plane, owner, "/keys", {"name": f"roll{i}"})
        (v_status, _), (r_status, rolled) = await asyncio.gather(
            plane.call("POST", f"{base(owner)}/keys/{key['id']}/revoke", owner),
            plane.call("POST", f"{base(owner)}/keys/{key['id']}/roll", owner,
                       json={"overlap_seconds": 0}))
        assert v_status == 200 and r_status in (201, 409), (v_status, r_status, rolled)

    for start in range(0, ROUNDS, AT_ONCE):
        await asyncio.gather(*(one(i) for i in range(start, min(start + AT_ONCE, ROUNDS))))


async def test_nothing_dangles_after_the_races(plane, owner):
    conn = await asyncpg.connect(plane.database_url)
    try:
        dangling_channels = await conn.fetchval(
            "SELECT count(*) FROM alert_rules r, unnest(r.channel_ids) AS c(id)"
            " WHERE NOT EXISTS (SELECT 1 FROM notification_channels n WHERE n.id = c.id)")
        keys_on_missing = await conn.fetchval(
            "SELECT count(*) FROM api_keys k WHERE k.policy_id IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM policies p WHERE p.id = k.policy_id)")
    finally:
        await conn.close()
    assert (dangling_channels, keys_on_missing) == (0, 0)
