-- When each host's last heartbeat arrived (unix seconds), apart from
-- `last_seen` (any contact, `swarm check` included): a host whose agent
-- sends no heartbeats (no --master) is shown as such, and only a host that
-- sends them can go silent.
ALTER TABLE hosts ADD COLUMN last_heartbeat BIGINT;
-- Hosts known before this column existed are taken to send heartbeats (the
-- default since a worker needs --master): their last contact stands in for
-- their last heartbeat, so one already silent is still noticed.
UPDATE hosts SET last_heartbeat = last_seen WHERE status IN ('active', 'unreachable');
