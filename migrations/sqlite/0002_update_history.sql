-- Per-host history of updates, rollbacks and self-updates.
CREATE TABLE update_history (
    id       TEXT PRIMARY KEY,
    host     TEXT NOT NULL,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,      -- update | rollback | update_self
    release  TEXT NOT NULL,      -- release label
    sha256   TEXT NOT NULL,
    outcome  TEXT NOT NULL,      -- updated | rolled_back | failed | skipped
    detail   TEXT NOT NULL
);
CREATE INDEX update_history_host ON update_history (host, at);
