"""The management API's alert operations: notification channels (with a "send a test
notification" action), rules with their current state, the history of transitions and
the record of deliveries. Declared in the operation table (web/api/registry.py), so they
are routed and documented in the OpenAPI document like every other operation."""

from __future__ import annotations

from rateguard.alerts.rules import COMPARATORS, METRICS, RATIO_METRICS, STATES
from rateguard.alerts.store import AlertStore
from rateguard.web.api import schemas as s
from rateguard.web.api.registry import Ctx, Param, op

_NUM_OR_NULL = {"type": ["number", "null"]}
_CHANNEL_KIND = {"type": "string", "enum": ["webhook", "slack", "smtp"]}
_STATE = {"type": "string", "enum": list(STATES)}

s.COMPONENTS.update({
    "AlertChannel": s.obj({
        "id": s.ID, "workspace_id": s.ID, "name": s.STR, "kind": _CHANNEL_KIND,
        "config": {"type": "object", "description": "the channel's settings, without "
                                                    "secrets"},
        "has_secret": {"type": "boolean"}, "created_at": s.TIME,
        "secret": {"type": "string", "description": "a generated webhook signing secret, "
                                                    "only in the answer that creates it"},
    }, ["id", "workspace_id", "name", "kind", "config", "has_secret", "created_at"]),
    "AlertRule": s.obj({
        "id": s.ID, "workspace_id": s.ID, "api_id": s.NULL_ID, "name": s.STR,
        "metric": {"type": "string", "enum": list(METRICS)},
        "comparator": {"type": "string", "enum": list(COMPARATORS)},
        "threshold": {"type": "number"}, "window_seconds": {"type": "integer"},
        "for_seconds": {"type": "integer"},
        "channel_ids": {"type": "array", "items": s.STR}, "enabled": {"type": "boolean"},
        "created_at": s.TIME, "updated_at": s.TIME, "state": _STATE,
        "state_since": s.NULL_TIME, "last_value": _NUM_OR_NULL,
        "last_evaluated_at": s.NULL_TIME,
    }),
    "AlertTransition": s.obj({
        "id": {"type": "integer"}, "rule_id": s.ID, "seq": {"type": "integer"},
        "from_state": _STATE, "to_state": _STATE, "value": _NUM_OR_NULL,
        "threshold": {"type": "number"}, "created_at": s.TIME,
    }),
    "AlertDelivery": s.obj({
        "id": {"type": "integer"}, "channel_id": s.ID,
        "history_id": {"type": ["integer", "null"]},
        "kind": {"type": "string", "enum": ["firing", "resolved", "test"]},
        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": s.INT, "last_error": {"type": ["string", "null"]}, "created_at": s.TIME,
        "next_attempt_at": s.NULL_TIME, "delivered_at": s.NULL_TIME,
        "attempt_log": {"type": "array", "items": s.obj({
            "attempt": {"type": "integer"}, "ok": {"type": "boolean"},
            "status_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]}, "duration_ms": {"type": "number"},
            "at": s.TIME})},
    }),
    "AlertTestResult": s.obj({
        "ok": {"type": "boolean"}, "delivery_id": {"type": "integer"},
        "status_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
        "duration_ms": {"type": "number"},
    }),
})
for _name in ("AlertChannel", "AlertRule", "AlertTransition", "AlertDelivery"):
    s.COMPONENTS[_name + "List"] = s.items_of(_name)

EGRESS = ("refused, whatever the pattern allows: cloud metadata names (metadata, "
          "metadata.google.internal, ...) and unroutable addresses (this network 0.0.0.0/8 "
          "and ::, link-local 169.254.0.0/16 and fe80::/10, multicast, broadcast, 240.0.0.0/4, "
          "also in legacy numeric forms such as 0x0 or 2852039166 and inside IPv6 forms "
          "that embed IPv4); in production also private and loopback addresses unless "
          "ALLOW_PRIVATE_UPSTREAMS")
HTTP_URL = {**s.HTTP_URL, "description": "an http(s) URL; " + EGRESS}
EMAIL = {"type": "string", "format": "email", "maxLength": 254}
_CHANNEL_COMMON = {"name": s.NAME}


def _channel_kind(kind: str, properties: dict, required: list[str], description: str,
                  **extra) -> dict:
    return {"type": "object", "title": kind, "description": description, **extra,
            "required": ["name", "kind", *required], "additionalProperties": False,
            "properties": {**_CHANNEL_COMMON, "kind": {"type": "string", "enum": [kind]},
                           **properties}}


CHANNEL_IN = {
    "description": "One of three kinds, chosen by 'kind'; a field of another kind is "
                   "refused (422).",
    "oneOf": [
        _channel_kind("webhook", {
            "url": HTTP_URL,
            "secret": {"type": "string", "minLength": 16, "maxLength": 256,
                       "description": "the signing secret; omit it to get one made and "
                                      "returned once"},
        }, ["url"], "a signed JSON webhook"),
        _channel_kind("slack", {"url": {**HTTP_URL, "description": "the incoming-webhook "
                                                                   "URL, stored encrypted"}},
                      ["url"], "a Slack incoming webhook"),
        _channel_kind("smtp", {
            "host": {"type": "string", "maxLength": 253,
                     "pattern": "^([A-Za-z0-9.-]{1,253}|\\[?[0-9A-Fa-f:.]+\\]?)$",
                     "description": "a host name or IP address; " + EGRESS},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                     "description": "default 587 with starttls, else 25"},
            "starttls": {"type": "boolean", "default": True},
            "tls_verify": {"type": "boolean", "default": True},
            "username": {"type": "string", "minLength": 1, "maxLength": 254,
                         "pattern": s.TRIMMED},
            "password": {"type": "string", "minLength": 1, "maxLength": 1024,
                         "description": "needs username"},
            "from": EMAIL,
            "to": {"type": "array", "items": EMAIL, "minItems": 1, "maxItems": 20},
        }, ["host", "from", "to"], "email through an SMTP server",
            dependentRequired={"password": ["username"]}),
    ],
    "discriminator": {"propertyName": "kind"},
}
RULE_IN = s.obj({
    "name": s.NAME,
    "metric": {"type": "string", "enum": list(METRICS),
               "description": "error_rate (share of 5xx, 0-1), p95_latency / p99_latency "
                              "(ms), limited_ratio (share refused by the limiter, 0-1), "
                              "request_count"},
    "comparator": {"type": "string", "enum": list(COMPARATORS)},
    "threshold": {"type": "number", "minimum": 0, "maximum": 1e12,
                  "description": "at most 1 for error_rate and limited_ratio (shares)"},
    "window_seconds": {"type": "integer", "minimum": 1, "maximum": 7 * 86400},
    "for_seconds": {"type": "integer", "minimum": 0, "maximum": 7 * 86400, "default": 0,
                    "description": "how long the condition must hold before firing"},
    "api_id": {**s.NULL_ID, "description": "only this API (default: the whole workspace)"},
    "channel_ids": {"type": "array", "items": s.ID, "maxItems": 20},
    "enabled": {"type": "boolean", "default": True},
}, ["name", "metric", "comparator", "threshold", "window_seconds"])
RULE_IN["if"] = {"properties": {"metric": {"enum": list(RATIO_METRICS)}}, "required": ["metric"]}
RULE_IN["then"] = {"properties": {"threshold": {"maximum": 1}}}

LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
              "at most this many entries")
RULE_FILTER = Param("rule_id", s.QUERY_ID, "only this rule")


def _store(ctx: Ctx) -> AlertStore:
    return AlertStore(ctx.repo)


@op("GET", "/workspaces/{workspace_id}/alerts/channels", summary="Notification channels.",
    tag="alerts", response=s.ref("AlertChannelList"))
async def list_alert_channels(ctx: Ctx):
    return {"items": await _store(ctx).list_channels(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/alerts/channels", summary="Add a notification "
    "channel: a signed JSON webhook, a Slack incoming webhook or SMTP email.", tag="alerts",
    access="admin", status=201, request=CHANNEL_IN, response=s.ref("AlertChannel"),
    errors=(400, 422))
async def create_alert_channel(ctx: Ctx):
    return await _store(ctx).create_channel(ctx.actor, ctx.workspace_id, ctx.body)


@op("DELETE", "/workspaces/{workspace_id}/alerts/channels/{channel_id}", summary="Remove "
    "a channel (and from the rules that use it).", tag="alerts", access="admin", status=204)
async def delete_alert_channel(ctx: Ctx):
    await _store(ctx).delete_channel(ctx.actor, ctx.workspace_id, ctx.path("channel_id"))


@op("POST", "/workspaces/{workspace_id}/alerts/channels/{channel_id}/test",
    summary="Send a test notification through the channel now and report how it went.",
    tag="alerts", access="admin", response=s.ref("AlertTestResult"))
async def test_alert_channel(ctx: Ctx):
    return await _store(ctx).send_test(ctx.actor, ctx.workspace_id, ctx.path("channel_id"))


@op("GET", "/workspaces/{workspace_id}/alerts/rules", summary="Alert rules and their "
    "current state.", tag="alerts", response=s.ref("AlertRuleList"))
async def list_alert_rules(ctx: Ctx):
    return {"items": await _store(ctx).list_rules(ctx.workspace_id)}


@op("POST", "/workspaces/{workspace_id}/alerts/rules", summary="Create an alert rule.",
    tag="alerts", access="admin", status=201, request=RULE_IN, response=s.ref("AlertRule"),
    errors=(400, 409, 422))
async def create_alert_rule(ctx: Ctx):
    return await _store(ctx).create_rule(ctx.actor, ctx.workspace_id, ctx.body)


@op("GET", "/workspaces/{workspace_id}/alerts/rules/{rule_id}", summary="One alert rule "
    "and its state.", tag="alerts", response=s.ref("AlertRule"))
async def get_alert_rule(ctx: Ctx):
    return await _store(ctx).get_rule(ctx.workspace_id, ctx.path("rule_id"))


@op("DELETE", "/workspaces/{workspace_id}/alerts/rules/{rule_id}", summary="Delete an "
    "alert rule and its history.", tag="alerts", access="admin", status=204)
async def delete_alert_rule(ctx: Ctx):
    await _store(ctx).delete_rule(ctx.actor, ctx.workspace_id, ctx.path("rule_id"))


@op("GET", "/workspaces/{workspace_id}/alerts/history", summary="State transitions of "
    "the rules, newest first.", tag="alerts", query=(RULE_FILTER, LIMIT),
    response=s.ref("AlertTransitionList"), errors=(422,))
async def list_alert_history(ctx: Ctx):
    return {"items": await _store(ctx).history(ctx.workspace_id, ctx.query_str("rule_id"),
                                               ctx.query_int("limit", 100, 1, 1000))}


@op("GET", "/workspaces/{workspace_id}/alerts/deliveries", summary="Notifications and "
    "every attempt to deliver them, newest first.", tag="alerts", query=(LIMIT,),
    response=s.ref("AlertDeliveryList"), errors=(422,))
async def list_alert_deliveries(ctx: Ctx):
    return {"items": await _store(ctx).deliveries(ctx.workspace_id,
                                                  ctx.query_int("limit", 100, 1, 1000))}
