-- Accounts people can recover (issue 17): instance operators, sessions a user can list
-- and end, refresh-token reuse detection, one-time password reset links, and sealed
-- credentials of webhook URLs.

-- An instance operator (granted only from the command line: `rateguard users operator`)
-- may list, disable and enable users through the API and the dashboard.
ALTER TABLE users ADD COLUMN operator boolean NOT NULL DEFAULT false;

-- What a user sees of their sessions, and why one ended.
ALTER TABLE sessions
    ADD COLUMN user_agent   text NOT NULL DEFAULT '',
    ADD COLUMN client_ip    text NOT NULL DEFAULT '',
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN ended_reason text;
CREATE INDEX sessions_active ON sessions (user_id) WHERE revoked_at IS NULL;

-- Every refresh token a session has already traded in (SHA-256). One presented again
-- was copied: the session it belongs to is ended.
CREATE TABLE spent_refresh_tokens (
    refresh_hash text PRIMARY KEY,
    session_id   text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spent_refresh_tokens_session ON spent_refresh_tokens (session_id);
CREATE INDEX spent_refresh_tokens_spent ON spent_refresh_tokens (spent_at);

-- One-time password reset links made by an operator (`rateguard users reset-password`).
CREATE TABLE password_resets (
    id         text PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- A webhook URL's `user:password@` part, sealed with ENCRYPTION_KEY like the other
-- channel secrets; config.url keeps the URL with those credentials masked.
ALTER TABLE notification_channels ADD COLUMN url_credentials text;
