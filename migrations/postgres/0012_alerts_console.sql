-- Alerts: events matching an alert's topics (and kinds) are POSTed to its
-- webhook, signed with its secret (HMAC-SHA256); each delivery's outcome is
-- kept (the alert history).
CREATE TABLE alerts (
    name TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    topics TEXT NOT NULL,
    kinds TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE alert_deliveries (
    id TEXT PRIMARY KEY,
    alert TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    detail TEXT
);
CREATE INDEX alert_deliveries_at ON alert_deliveries (at);
-- The console's one-time login URLs and its sessions, both stored as the
-- SHA-256 of their secret: the database never holds what opens a session.
CREATE TABLE console_tickets (
    hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE console_sessions (
    hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source TEXT
);
CREATE INDEX console_sessions_operator ON console_sessions (operator);
