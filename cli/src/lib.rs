//! decnet-cli: the parts of the `decnet` command line that need no master.
//!
//! * [`args`] — every command's arguments (the clap tree, daemons' flags
//!   included);
//! * [`table`] — human output: the fleet table, ages and times, and
//!   [`table::inert`], through which every string a worker sent is shown;
//! * [`exit`] — how a command ends: usage errors, verdicts, exit codes;
//! * [`release`] — release tarballs: `decnet release keygen` and `pack`;
//! * [`render`] — what fleet commands print, local or through a context
//!   (hosts, status, checks, the doctor's report, the audit log, deploys,
//!   teardowns, rollouts, rollbacks, a refused release's evidence);
//! * [`job_cmd`] — `decnet job …`, and starting and following a job;
//! * [`events_cmd`] — `decnet events`, `decnet alert …`, `decnet console`
//!   through a context;
//! * [`remote`] — every operator command through a context: calls to the
//!   fleet API, with the same output and exit codes as on the master host;
//! * [`operator_cmd`] — `decnet operator …` through a context, `decnet
//!   login`, `decnet context …`, the renewal of an operator's certificate;
//! * [`confirm`], [`doctor_cmd`], [`evidence`] — a destructive command's
//!   confirmation, the doctor's thresholds and verdict, where a fetched
//!   evidence archive is written.
//!
//! This crate never depends on `decnet-fleet`, `decnet-server` or sqlx, so
//! nothing in it can open the fleet's database or read the CA's key
//! (DESIGN.md §2); `scripts/test.sh` checks its dependency tree.

pub mod args;
pub mod confirm;
pub mod doctor_cmd;
pub mod events_cmd;
pub mod evidence;
pub mod exit;
pub mod job_cmd;
pub mod operator_cmd;
pub mod release;
pub mod remote;
pub mod render;
pub mod table;
