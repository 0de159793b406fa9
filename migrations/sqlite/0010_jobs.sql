-- Jobs: long fleet operations (a deploy) run by a master daemon for an
-- operator, their truth here so they outlive the CLI that asked and any
-- master on the database can answer for them (fleet/src/jobs.rs).
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,             -- deploy
    actor            TEXT NOT NULL,
    state            TEXT NOT NULL,             -- running | done | failed | cancelled | interrupted
    idempotency_key  TEXT UNIQUE,               -- <actor>:<key>: a repeated request answers with this job
    request          TEXT NOT NULL,             -- JSON
    result           TEXT,                      -- JSON, once finished
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,           -- the running daemon's heartbeat
    finished_at      BIGINT,
    cancel_requested BIGINT NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_at);
-- Per-host progress.
CREATE TABLE job_hosts (
    job_id     TEXT NOT NULL,
    host       TEXT NOT NULL,
    state      TEXT NOT NULL,                   -- pending | ok | failed
    detail     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, host)
);
-- Progress lines, numbered: a follower resumes after the last it saw.
CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    at     BIGINT NOT NULL,
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
-- Which running job holds which host (a second one on the same host is a
-- conflict); renewed by the job's heartbeat, expired when it stops.
CREATE TABLE host_leases (
    host       TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
