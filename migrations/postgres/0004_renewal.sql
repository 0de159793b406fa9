-- An operator asked this host to renew its certificate (decnet swarm renew).
ALTER TABLE hosts ADD COLUMN renew_requested BIGINT;
