-- The alerts worker: rules with a `for` duration and a pending state, each rule's
-- history of transitions, and a notification outbox.
--
-- Exactly-once notifications across leader changes: the leader records a transition
-- (alert_history, numbered per rule) and one outbox row per channel in the same
-- transaction as the new state, then delivers from the outbox. (history_id, channel_id)
-- is unique, so a transition is queued once per channel however often it is evaluated;
-- a delivery is marked done in the transaction that records its attempt.

ALTER TABLE alert_rules
    ADD COLUMN for_seconds integer NOT NULL DEFAULT 0 CHECK (for_seconds >= 0),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT alert_rules_metric CHECK (metric IN
        ('error_rate', 'p95_latency', 'p99_latency', 'limited_ratio', 'request_count'));

ALTER TABLE alert_state DROP CONSTRAINT alert_state_state_check;
ALTER TABLE alert_state
    ADD CONSTRAINT alert_state_state_check
        CHECK (state IN ('ok', 'pending', 'firing', 'resolved')),
    ADD COLUMN pending_since timestamptz,
    ADD COLUMN transitions bigint NOT NULL DEFAULT 0;

CREATE INDEX notification_channels_workspace ON notification_channels (workspace_id);

CREATE TABLE alert_history (
    id           bigserial PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    rule_id      text NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,      -- the rule's n-th transition
    from_state   text NOT NULL,
    to_state     text NOT NULL,
    value        double precision,
    threshold    double precision NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule_id, seq)
);
CREATE INDEX alert_history_workspace ON alert_history (workspace_id, id DESC);

CREATE TABLE notification_outbox (
    id              bigserial PRIMARY KEY,
    workspace_id    text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    channel_id      text NOT NULL REFERENCES notification_channels (id) ON DELETE CASCADE,
    history_id      bigint REFERENCES alert_history (id) ON DELETE CASCADE,  -- null: a test
    kind            text NOT NULL CHECK (kind IN ('firing', 'resolved', 'test')),
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (history_id, channel_id)
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX notification_outbox_workspace ON notification_outbox (workspace_id, id DESC);

CREATE TABLE notification_attempts (
    id          bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES notification_outbox (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    ok          boolean NOT NULL,
    status_code integer,
    error       text,
    duration_ms double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (outbox_id, attempt)
);
