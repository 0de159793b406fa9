//! The decnet master: operator CLI, fleet database, enrollment.
//!
//! The fleet database and every issuance transaction live in `decnet-fleet`;
//! serving in `decnet-server`. This crate is the `decnet` binary:
//!
//! * [`usage`], [`table`] — what every command shares: usage errors and
//!   exit codes, the audit actor, opening the database and the CA; tables;
//! * [`fleet_ops`] — driving the agents (deploy, teardown, status, check);
//! * [`home`] — where the master's files live;
//! * [`log_gate`], [`listener_cmd`] — the syslog listener and its fleet check;
//! * [`release`], [`rollout`] — release tarballs and fleet rollouts through the updaters;
//! * [`demo`] — the one-command local fleet demo;
//! * [`control_api`], [`daemon`] — `decnet master serve`: heartbeats, joins,
//!   renewals, the CRL, and the listener beside them;
//! * [`clone_watch`] — one certificate heartbeating from two sources in turn;
//! * [`refusal_audit`] — repeated refusals of one identity or source as one
//!   counted audit entry per window;
//! * [`doctor`] — `swarm doctor`: expiring certificates, silent hosts, clock
//!   skew, pin mismatches, as findings and an exit code;
//! * [`monitor_cmd`] — certificates of metrics scrapers;
//! * [`metrics`] — the master's fleet series (heartbeats, ages, clock skew,
//!   renewals, joins);
//! * [`events`], [`events_api`] — the event bus (`GET /v1/events`) and
//!   what follows it; [`alerts`] — signed webhooks of matching events;
//! * [`console`] — the web console (sessions from one-time URLs, pages,
//!   the same `/v1` routes);
//! * [`cli`] — the `decnet` command line and its commands.

pub mod alerts;
pub mod authorities;
pub mod authz;
pub mod beats;
pub mod ca_rotation_cmd;
pub mod cli;
pub mod clone_watch;
pub mod console;
pub mod console_cmd;
pub mod control_api;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod events;
pub mod events_api;
pub use decnet_cli::events_cmd;
pub mod fleet_api;
pub mod fleet_ops;
pub mod free_space;
pub mod home;
pub use decnet_cli::job_cmd;
pub mod jobs;
pub mod listener_cmd;
pub mod log_gate;
pub mod metrics;
pub mod monitor_cmd;
pub mod openapi;
pub mod operator_cmd;
pub mod ops;
pub mod refusal_audit;
pub use decnet_cli::release;
pub use decnet_cli::remote;
pub mod rollout;
pub mod standing;
pub use decnet_cli::table;
pub mod usage;
