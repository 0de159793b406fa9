//! The decnet master: operator CLI, fleet database, enrollment.
//!
//! * [`fleet_db`] — the fleet database (SQLite or PostgreSQL through sqlx);
//! * [`enrollment`] — issuing worker bundles and recording them;
//! * [`fleet_ops`] — driving the agents (deploy, teardown, status, check);
//! * [`home`] — where the master's files live;
//! * [`log_gate`], [`listener_cmd`] — the syslog listener and its fleet check;
//! * [`release`], [`rollout`] — release tarballs and fleet rollouts through the updaters;
//! * [`demo`] — the one-command local fleet demo;
//! * [`control_api`] — `decnet master serve`: heartbeats (and the listener beside it);
//! * [`join`] — one-time tokens and CSR joins;
//! * [`cli`] — the `decnet` command line and its commands.

pub mod cli;
pub mod control_api;
pub mod demo;
pub mod enrollment;
pub mod fleet_db;
pub mod fleet_ops;
pub mod home;
pub mod join;
pub mod listener_cmd;
pub mod log_gate;
pub mod release;
pub mod rollout;
