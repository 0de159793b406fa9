-- Operators: people (or scripts) with identities of their own, driving the
-- fleet API with an `operator@<name>` certificate whose key never leaves
-- their machine. Their role and host scope live here, not in the
-- certificate, so a change or a revocation takes effect on the next request.
CREATE TABLE operators (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,             -- viewer | deployer | admin
    hosts       TEXT NOT NULL,             -- JSON array of host-name globs; [] = every host
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  BIGINT
);
-- One-time enrolment tokens of operators (`decnet operator add`): only a
-- SHA-256 of the secret is stored.
CREATE TABLE operator_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    operator    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_by  TEXT NOT NULL
);
