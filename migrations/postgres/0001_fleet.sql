-- Fleet inventory, certificate ledger, deny list and audit log.
-- Times are unix seconds (BIGINT); ids are application-generated TEXT, so the
-- same queries run through sqlx's Any driver on SQLite and PostgreSQL.

CREATE TABLE hosts (
    name                TEXT PRIMARY KEY,
    address             TEXT NOT NULL,
    agent_port          BIGINT NOT NULL,
    updater_port        BIGINT NOT NULL,
    sans                TEXT NOT NULL,            -- JSON array
    agent_fingerprint   TEXT,
    updater_fingerprint TEXT,
    status              TEXT NOT NULL,            -- enrolled | active | unreachable | decommissioned
    enrolled_at         BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    last_seen           BIGINT,
    last_error          TEXT,
    agent_version       TEXT,
    state_json          TEXT
);

CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    role        TEXT NOT NULL,                    -- agent | updater | master
    serial      TEXT NOT NULL,
    not_after   BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL
);
CREATE INDEX certificates_host ON certificates (host);

CREATE TABLE revoked_certificates (
    fingerprint TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    role        TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL
);

CREATE TABLE audit_log (
    id       TEXT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,                       -- ok | refused | failed
    detail   TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
