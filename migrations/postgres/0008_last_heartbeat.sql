-- When each host's last heartbeat arrived (unix seconds), apart from
-- `last_seen` (any contact, `swarm check` included): a host whose agent
-- sends no heartbeats (no --master) is shown as such, and only a host that
-- sends them can go silent.
ALTER TABLE hosts ADD COLUMN last_heartbeat BIGINT;
