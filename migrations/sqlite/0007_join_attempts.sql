-- Join attempts per source (IPv4 address or IPv6 /64) per minute, shared by
-- every master process on this database: the join rate limit holds across
-- masters. Old windows are pruned by the masters' housekeeping.
CREATE TABLE join_attempts (
    source       TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    attempts     BIGINT NOT NULL,
    PRIMARY KEY (source, window_start)
);
