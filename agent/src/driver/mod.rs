//! Workload drivers behind one trait: [`process::ProcessDriver`] (supervised
//! local processes) and [`compose::ComposeDriver`] (Docker Compose).
//!
//! A driver starts and stops single deckies and reports what it observes;
//! lifecycle changes it notices on its own (a crash, a restart) arrive as
//! [`DriverEvent`]s that the executor records in the state file.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::config::{DeckyConfig, DeploymentConfig, DriverKind};

pub mod compose;
pub mod compose_firewall;
pub mod decky_ids;
pub mod egress_proxy;
pub mod process;
pub mod shepherd;

/// The boxed future drivers return (keeps [`Driver`] object-safe).
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a driver operation failed. The message is shown to the operator as
/// the decky's error, so it says what happened without internals.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// One process for its whole life: pid plus kernel start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// Process id.
    pub pid: u32,
    /// Kernel start time (clock ticks since boot), to detect pid reuse.
    pub start_time: u64,
}

/// A running decky's process facts, for re-adoption after an agent restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Process id of the decky's program.
    pub pid: u32,
    /// Its kernel start time.
    pub start_time: u64,
    /// The uid it runs under.
    pub uid: Option<u32>,
    /// The shepherd that holds its output pipe and records its exit.
    pub shepherd: Option<ProcId>,
}

/// The result of a successful start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Started {
    /// Its process, when the driver runs one.
    pub process: Option<ProcessFacts>,
    /// It already ran to a clean end (a one-shot decky).
    pub exited: bool,
}

/// Something a driver noticed on its own.
#[derive(Clone, Debug)]
pub enum DriverEvent {
    /// The decky (re)started.
    Started {
        /// Decky name.
        name: String,
        /// Its process, when the driver runs one.
        process: Option<ProcessFacts>,
        /// Whether this was a restart after an exit.
        restart: bool,
    },
    /// The decky exited and will not be restarted.
    Exited {
        /// Decky name.
        name: String,
        /// `None` for a clean exit, otherwise what went wrong.
        error: Option<String>,
    },
}

/// What the driver sees of one decky right now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observation {
    /// Whether it is running.
    pub running: bool,
    /// Driver-specific detail (compose: the container state and status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Why a driver will not take a decky, decided before a deploy is accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// Something it needs is taken (a port): `409`.
    #[error("{0}")]
    Conflict(String),
    /// This host cannot run it as configured: `422`.
    #[error("{0}")]
    Unsupported(String),
}

/// A workload driver.
pub trait Driver: Send + Sync + 'static {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Take what `decky` needs on this host before its deploy is accepted
    /// (the process driver binds its ports, so a port already taken is a
    /// refusal at once, not a failed start later). Default: nothing.
    fn admit(&self, decky: &DeckyConfig) -> Result<(), Refusal> {
        let _ = decky;
        Ok(())
    }

    /// Start one decky; returns once it is running (or failed to start).
    fn start<'a>(
        &'a self,
        decky: &'a DeckyConfig,
    ) -> DriverFuture<'a, Result<Started, DriverError>>;

    /// Take over a decky that a previous agent process started; `false` when
    /// it is no longer running (the caller then starts it again).
    fn adopt<'a>(
        &'a self,
        decky: &'a DeckyConfig,
        facts: Option<ProcessFacts>,
    ) -> DriverFuture<'a, bool>;

    /// Stop and remove one decky (a teardown): what it left is archived
    /// where the driver keeps evidence, and what it held is freed.
    fn stop<'a>(&'a self, decky: &'a DeckyConfig) -> DriverFuture<'a, Result<(), DriverError>>;

    /// The archive of what torn-down deckies left, when the driver keeps
    /// one (the process driver). Default: none.
    fn evidence(&self) -> Option<&crate::evidence::EvidenceArchive> {
        None
    }

    /// Observe the given deckies.
    fn observe<'a>(
        &'a self,
        names: &'a [String],
    ) -> DriverFuture<'a, BTreeMap<String, Observation>>;

    /// What a deploy of `config` would run, without running it (dry run).
    fn render(&self, config: &DeploymentConfig) -> Result<serde_json::Value, DriverError>;

    /// How deckies are contained on this host (ids, limits and what
    /// enforces them), for `/status`.
    fn containment(&self) -> serde_json::Value;
}
