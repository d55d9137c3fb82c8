"""One evaluation pass: read every enabled rule, ask ClickHouse for all of a batch's
windows in ONE query, and apply the state machine (rules.py) in PostgreSQL.

The query joins the raw events against the batch's rules, passed as one array
parameter (rule id, workspace, API or '', window): ClickHouse scans the events of the
batch's workspaces over the longest window once and aggregates per rule. Raw events (not
the per-minute rollup) so windows shorter than a minute are exact.

State changes of a batch are written in one transaction on the leader's connection (the
one holding the advisory lock): a state, its history row and the outbox rows of its
notifications commit together or not at all, and a leader that has lost its lock (its
connection is gone) cannot commit anything.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Iterable

from rateguard.alerts.rules import (
    NOTIFY_STATES, SYMBOLS, Aggregate, breaches, describe, metric_value, step,
)

log = logging.getLogger(__name__)


def batch_sql(database: str) -> str:
    return (
        "SELECT rules.rid, count(), countIf(e.status >= 500), countIf(e.decision = 'limited'),"
        " quantiles(0.95, 0.99)(e.latency_ms)"
        f" FROM {database}.api_events AS e"
        " INNER JOIN (SELECT tupleElement(r, 1) AS rid, tupleElement(r, 2) AS ws,"
        " tupleElement(r, 3) AS api, tupleElement(r, 4) AS win"
        " FROM (SELECT arrayJoin({rules:Array(Tuple(String, String, String, UInt32))}) AS r))"
        " AS rules ON e.workspace_id = rules.ws"
        " WHERE e.workspace_id IN {workspaces:Array(String)}"
        " AND e.ts >= now64(3) - toIntervalSecond({max_window:UInt32})"
        " AND e.ts >= now64(3) - toIntervalSecond(rules.win)"
        " AND (rules.api = '' OR e.api_id = rules.api)"
        " GROUP BY rules.rid")


async def aggregates(clickhouse, database: str, rules: list) -> dict[str, Aggregate]:
    """One query for the whole batch: rule id -> its window's aggregate."""
    if not rules:
        return {}
    params = {
        "rules": [(r["id"], r["workspace_id"], r["api_id"] or "", int(r["window_seconds"]))
                  for r in rules],
        "workspaces": sorted({r["workspace_id"] for r in rules}),
        "max_window": max(int(r["window_seconds"]) for r in rules),
    }
    _columns, rows = await clickhouse.query(batch_sql(database), params)
    out = {}
    for rid, n, errors, limited, quantiles in rows:
        q = list(quantiles or [])
        out[rid] = Aggregate(int(n), int(errors), int(limited),
                             float(q[0]) if int(n) and q else None,
                             float(q[1]) if int(n) and len(q) > 1 else None)
    return out


def payload(rule, previous: str, state: str, value: float | None, now: datetime,
            history_id: int, seq: int) -> dict:
    comparator = SYMBOLS[rule["comparison"]]
    scope = f"API {rule['api_id']}" if rule["api_id"] else f"workspace {rule['workspace_id']}"
    text = (f"[{state.upper()}] {rule['name']}: {rule['metric']} {describe(rule['metric'], value)}"
            f" ({comparator} {describe(rule['metric'], rule['threshold'])} over "
            f"{rule['window_seconds']}s) on {scope}")
    return {
        "event": f"alert.{state}", "status": state, "previous_status": previous,
        "rule": {"id": rule["id"], "name": rule["name"], "workspace_id": rule["workspace_id"],
                 "api_id": rule["api_id"], "metric": rule["metric"], "comparator": comparator,
                 "threshold": rule["threshold"], "window_seconds": rule["window_seconds"],
                 "for_seconds": rule["for_seconds"]},
        "value": value, "at": now.isoformat(), "summary": text,
        "transition": {"id": history_id, "seq": seq},
    }


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


async def enabled_rules(conn) -> list:
    return await conn.fetch("SELECT * FROM alert_rules WHERE enabled ORDER BY id")


async def apply(conn, rule_ids: list[str], aggs: dict[str, Aggregate]) -> list[dict]:
    """Advance each rule's state; returns the transitions made. Call inside a
    transaction: the rules are locked against deletion, their states for update."""
    now = await conn.fetchval("SELECT clock_timestamp()")
    rules = await conn.fetch("SELECT * FROM alert_rules WHERE id = ANY($1) AND enabled"
                             " ORDER BY id FOR SHARE", rule_ids)
    states = {r["rule_id"]: r for r in await conn.fetch(
        "SELECT * FROM alert_state WHERE rule_id = ANY($1) ORDER BY rule_id FOR UPDATE",
        rule_ids)}
    transitions = []
    for rule in rules:
        current = states.get(rule["id"])
        state = current["state"] if current else "ok"
        pending_since = current["pending_since"] if current else None
        seq = current["transitions"] if current else 0
        since = current["since"] if current else now
        value = metric_value(rule["metric"], aggs.get(rule["id"], Aggregate()))
        outcome = step(state, pending_since, breaches(rule["comparison"], value,
                                                      rule["threshold"]),
                       rule["for_seconds"], now)
        if outcome.transition:
            seq += 1
            since = now
            history_id = await conn.fetchval(
                "INSERT INTO alert_history (workspace_id, rule_id, seq, from_state, to_state,"
                " value, threshold, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (rule_id, seq) DO NOTHING RETURNING id",
                rule["workspace_id"], rule["id"], seq, state, outcome.state, value,
                rule["threshold"], now)
            if history_id is None:  # cannot happen under one leader; never notify twice
                log.error("alerts: transition %d of rule %s already recorded", seq, rule["id"])
                continue
            if outcome.notify and outcome.state in NOTIFY_STATES and rule["channel_ids"]:
                body = payload(rule, state, outcome.state, value, now, history_id, seq)
                await conn.execute(
                    "INSERT INTO notification_outbox (workspace_id, channel_id, history_id,"
                    " kind, payload) SELECT $1, c.id, $2, $3, $4 FROM notification_channels c"
                    " WHERE c.workspace_id = $1 AND c.id = ANY($5)"
                    " ON CONFLICT (history_id, channel_id) DO NOTHING",
                    rule["workspace_id"], history_id, outcome.state, body,
                    list(rule["channel_ids"]))
            transitions.append({"rule_id": rule["id"], "from": state, "to": outcome.state,
                                "value": value, "notify": outcome.notify, "seq": seq})
            log.info("alerts: rule %s (%s) %s -> %s, value %s", rule["id"], rule["name"],
                     state, outcome.state, describe(rule["metric"], value))
        await conn.execute(
            "INSERT INTO alert_state (rule_id, state, since, last_value, last_evaluated_at,"
            " pending_since, transitions) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (rule_id) DO UPDATE SET state = EXCLUDED.state,"
            " since = EXCLUDED.since, last_value = EXCLUDED.last_value,"
            " last_evaluated_at = EXCLUDED.last_evaluated_at,"
            " pending_since = EXCLUDED.pending_since, transitions = EXCLUDED.transitions",
            rule["id"], outcome.state, since, value, now, outcome.pending_since, seq)
    return transitions
