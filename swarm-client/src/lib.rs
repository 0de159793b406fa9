//! Typed async clients of the worker daemons, used by the master.
//!
//! * [`transport`] — the mTLS HTTP client ([`WorkerPool`]: master bundle,
//!   one TLS configuration for the fleet, role and fingerprint check per
//!   worker) and the error type shared by all clients;
//! * [`join`] — the worker side of a token join;
//! * [`master_link`] — a worker's link to the master: heartbeats, renewal,
//!   revocation lists;
//! * [`agent`] — [`AgentClient`];
//! * [`updater`] — [`UpdaterClient`] (multipart upload, fail-closed pin).

pub mod agent;
pub mod join;
pub mod master_link;
pub mod pace;
pub mod transport;
pub mod updater;

pub use agent::AgentClient;
pub use transport::{ClientError, Endpoint, WorkerPool};
pub use updater::UpdaterClient;
