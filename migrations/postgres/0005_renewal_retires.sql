-- Renewal retires what it replaces. A renewed certificate is *pending* until
-- the worker first presents it; then it becomes current and the one it
-- replaced *retires*: still accepted until retire_at, then revoked.
ALTER TABLE hosts ADD COLUMN agent_pending TEXT;
ALTER TABLE hosts ADD COLUMN updater_pending TEXT;
-- Last renewal per role, for the per-host renewal rate limit.
ALTER TABLE hosts ADD COLUMN agent_renewed_at BIGINT;
ALTER TABLE hosts ADD COLUMN updater_renewed_at BIGINT;
ALTER TABLE certificates ADD COLUMN retire_at BIGINT;
CREATE INDEX certificates_retire_at ON certificates (retire_at);
