-- The audit log's searches by actor and by target (`GET /v1/audit`, the
-- console's audit page) read an index, not the whole log: an operator's
-- query must not hold a database connection for the length of a scan.
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);
CREATE INDEX audit_log_target_at ON audit_log (target, at);
