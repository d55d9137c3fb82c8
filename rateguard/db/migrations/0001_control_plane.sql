-- The control plane: accounts, workspaces, the gateway's config, API keys, audit log.
-- Ids are short random strings with a type prefix (ws_, api_, pol_, key_ ...): they
-- appear in events, ClickHouse and Redis keys, and are never guessable row numbers.

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text NOT NULL,
    name          text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

CREATE TABLE workspaces (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- An invitation is accepted with a token shown once (stored as SHA-256).
CREATE TABLE invitations (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    email        text NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    token_hash   text NOT NULL UNIQUE,
    invited_by   text REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX invitations_workspace ON invitations (workspace_id);

-- A login session: the refresh token (rotated on every refresh, stored as SHA-256) and
-- the id that access tokens carry, so logout revokes both at once.
CREATE TABLE sessions (
    id           text PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_hash text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE policies (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    limits       text[] NOT NULL,
    scope        text NOT NULL,
    mode         text NOT NULL,
    algorithm    text NOT NULL,
    failure_mode text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policies_workspace ON policies (workspace_id);

-- upstream_headers: {"Header-Name": "v1:<key id>:<AES-256-GCM ciphertext>"}; the proxy
-- decrypts them with ENCRYPTION_KEY and adds them to every upstream request.
CREATE TABLE apis (
    id               text PRIMARY KEY,
    workspace_id     text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name             text NOT NULL,
    host             text,
    prefix           text NOT NULL,
    upstream_url     text NOT NULL,
    strip_prefix     boolean NOT NULL DEFAULT true,
    policy_id        text REFERENCES policies (id),
    timeout_seconds  double precision,
    max_body_bytes   bigint,
    upstream_headers jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apis_workspace ON apis (workspace_id);
-- The proxies route on host + longest prefix across every workspace.
CREATE UNIQUE INDEX apis_route ON apis (coalesce(host, ''), prefix);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    last_four    text NOT NULL,
    policy_id    text REFERENCES policies (id),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    created_by   text REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    replaced_by  text REFERENCES api_keys (id) ON DELETE SET NULL
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id, created_at);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    workspace_id text REFERENCES workspaces (id) ON DELETE CASCADE,
    actor_id     text REFERENCES users (id) ON DELETE SET NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id DESC);

-- For the alerts worker (its own issue): channels, rules, and each rule's state.
CREATE TABLE notification_channels (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('webhook', 'slack', 'smtp')),
    config       jsonb NOT NULL DEFAULT '{}',
    secret       text,  -- encrypted like upstream headers
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_rules (
    id             text PRIMARY KEY,
    workspace_id   text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    api_id         text REFERENCES apis (id) ON DELETE CASCADE,
    name           text NOT NULL,
    metric         text NOT NULL,
    comparison     text NOT NULL CHECK (comparison IN ('>', '>=', '<', '<=')),
    threshold      double precision NOT NULL,
    window_seconds integer NOT NULL CHECK (window_seconds > 0),
    channel_ids    text[] NOT NULL DEFAULT '{}',
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_rules_workspace ON alert_rules (workspace_id);

CREATE TABLE alert_state (
    rule_id           text PRIMARY KEY REFERENCES alert_rules (id) ON DELETE CASCADE,
    state             text NOT NULL CHECK (state IN ('ok', 'firing', 'resolved')),
    since             timestamptz NOT NULL DEFAULT now(),
    last_value        double precision,
    last_evaluated_at timestamptz
);
