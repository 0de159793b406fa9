-- Clock skew of each host, from its last heartbeat: the worker's clock minus
-- the master's when the heartbeat arrived (milliseconds; positive = the
-- worker is ahead). `decnet swarm doctor` reports hosts whose skew is large.
ALTER TABLE hosts ADD COLUMN clock_skew_ms BIGINT;
