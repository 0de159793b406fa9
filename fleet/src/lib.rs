//! decnet-fleet: the fleet database and every issuance transaction, shared
//! by the `decnet` CLI and the master daemon.
//!
//! * [`model`] — hosts, certificates, audit and update records; roles,
//!   statuses and outcomes as enums;
//! * [`db`] — [`FleetDb`]: SQLite or PostgreSQL through sqlx, the host lock
//!   every issuance transaction takes;
//! * [`enrollment`] — enroll and reissue (bundles issued by the master);
//! * [`join`] — one-time tokens and CSR joins (keys generated on the worker);
//! * [`monitor`] — certificates of metrics scrapers, revocable;
//! * [`renewal`] — who speaks for a host, renewal that retires what it replaces;
//! * [`revocation`] — the CRL published to workers, rotation of the
//!   master's certificate.

pub mod ca_rotation;
pub mod console;
pub mod db;
pub mod enrollment;
pub mod jobs;
pub mod join;
pub mod model;
pub mod monitor;
pub mod operators;
pub mod renewal;
pub mod revocation;

pub use db::{AuditSearch, Backend, Contact, DbError, FleetDb, default_url, unix_now};
pub use model::{
    AuditEntry, AuditOutcome, CertRecord, CertRole, HostRecord, HostStatus, JoinToken, UpdateKind,
    UpdateOutcome, UpdateRecord, current_audit_source, is_reported_version, with_audit_source,
};
pub use renewal::{PeerRefusal, RenewPolicy, Renewed, Standing};
pub use revocation::{CrlPublisher, Rotated};
