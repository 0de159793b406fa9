-- Where an audited action came from: the fleet API client's address for
-- an operator's request (and the jobs it started); NULL for the CLI on the
-- master host (its actor, local:<user>, says where) and for the daemons'
-- own actions.
ALTER TABLE audit_log ADD COLUMN source TEXT;
