-- One-time join tokens. Only a SHA-256 of the secret is stored.
CREATE TABLE join_tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,
    host          TEXT NOT NULL,
    address       TEXT NOT NULL,
    sans          TEXT NOT NULL,     -- JSON array
    allow_updater BIGINT NOT NULL,   -- 0 | 1
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_agent    BIGINT,
    used_updater  BIGINT,
    failures      BIGINT NOT NULL,
    created_by    TEXT NOT NULL
);
