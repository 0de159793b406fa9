-- CA rotation (`decnet ca rotation`): which CA signed each certificate
-- (NULL: the CA the fleet was created with, before this column existed),
-- the trust set each host last reported, and the rotation under way (at
-- most one row) so every master on this database agrees on it and a
-- restarted master resumes it.
ALTER TABLE certificates ADD COLUMN ca TEXT;
ALTER TABLE hosts ADD COLUMN trust TEXT;
CREATE TABLE ca_rotation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    old_ca      TEXT NOT NULL,
    new_ca      TEXT NOT NULL,
    direction   TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    actor       TEXT NOT NULL
);
