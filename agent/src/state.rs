//! The agent's persisted state (`decnet-state.json`): every decky with its
//! config and phase, and recent operations. Written atomically (temp file +
//! rename), so a crash never leaves a torn file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{DeckyConfig, DriverKind};
use crate::driver::{ProcId, ProcessFacts};

/// File name of the state file inside the state dir.
pub const STATE_FILE: &str = "decnet-state.json";
/// How many finished operations are kept.
pub const KEEP_OPERATIONS: usize = 64;

/// Where a decky is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeckyPhase {
    /// Accepted, not started yet.
    Pending,
    /// Running.
    Running,
    /// Exited cleanly and will not be restarted.
    Exited,
    /// Failed to start or crashed for good; see `error`.
    Failed,
    /// Stopped and removed on request.
    TornDown,
}

impl DeckyPhase {
    /// Its name on the wire and in metrics (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            DeckyPhase::Pending => "pending",
            DeckyPhase::Running => "running",
            DeckyPhase::Exited => "exited",
            DeckyPhase::Failed => "failed",
            DeckyPhase::TornDown => "torn_down",
        }
    }
}

/// One decky's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeckyRecord {
    /// Its config as deployed.
    pub config: DeckyConfig,
    /// Its phase.
    pub phase: DeckyPhase,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Process id (process driver).
    pub pid: Option<u32>,
    /// Kernel start time of `pid` (to tell a re-used pid apart).
    pub pid_start: Option<u64>,
    /// The uid it runs under (process driver).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Its shepherd process (process driver).
    #[serde(default)]
    pub shepherd: Option<ProcId>,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
    /// Last change (unix seconds).
    pub updated_at: i64,
}

impl DeckyRecord {
    /// A pending record for `config`.
    pub fn pending(config: DeckyConfig, now: i64) -> DeckyRecord {
        DeckyRecord {
            config,
            phase: DeckyPhase::Pending,
            error: None,
            pid: None,
            pid_start: None,
            uid: None,
            shepherd: None,
            restarts: 0,
            updated_at: now,
        }
    }

    /// Record the decky's process (or its absence).
    pub fn set_process(&mut self, facts: Option<ProcessFacts>) {
        self.pid = facts.map(|f| f.pid);
        self.pid_start = facts.map(|f| f.start_time);
        self.shepherd = facts.and_then(|f| f.shepherd);
        if let Some(uid) = facts.and_then(|f| f.uid) {
            self.uid = Some(uid);
        }
    }

    /// The recorded process, when there is one.
    pub fn process(&self) -> Option<ProcessFacts> {
        Some(ProcessFacts {
            pid: self.pid?,
            start_time: self.pid_start?,
            uid: self.uid,
            shepherd: self.shepherd,
        })
    }
}

/// What kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// A deploy.
    Deploy,
    /// A teardown.
    Teardown,
    /// A mutate.
    Mutate,
}

/// A background operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Operation {
    /// Its id.
    pub id: String,
    /// What it does.
    pub kind: OperationKind,
    /// The deckies it concerns.
    pub deckies: Vec<String>,
    /// Start (unix seconds).
    pub started_at: i64,
    /// End (unix seconds), once finished.
    pub finished_at: Option<i64>,
    /// How a LAN config was mapped onto this worker (deploys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation: Option<crate::lan::Relocation>,
}

/// Everything the agent persists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentState {
    /// Format version of this file.
    pub format: u32,
    /// The driver that created the deckies.
    pub driver: DriverKind,
    /// Deckies by name.
    pub deckies: BTreeMap<String, DeckyRecord>,
    /// Recent operations, oldest first.
    pub operations: Vec<Operation>,
}

impl AgentState {
    /// An empty state for `driver`.
    pub fn new(driver: DriverKind) -> Self {
        AgentState {
            format: 1,
            driver,
            deckies: BTreeMap::new(),
            operations: Vec::new(),
        }
    }

    /// Add an operation, dropping the oldest finished ones beyond the limit.
    pub fn push_operation(&mut self, op: Operation) {
        self.operations.push(op);
        while self.operations.len() > KEEP_OPERATIONS {
            match self.operations.iter().position(|o| o.finished_at.is_some()) {
                Some(i) => {
                    self.operations.remove(i);
                }
                None => break,
            }
        }
    }

    /// An operation by id.
    pub fn operation_mut(&mut self, id: &str) -> Option<&mut Operation> {
        self.operations.iter_mut().find(|o| o.id == id)
    }
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("state file {path} is corrupt ({detail}); move it aside to start empty")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error.
        detail: String,
    },
    /// The file was written by another driver.
    #[error(
        "state file {path} belongs to the {found} driver, but this agent runs the {wanted} driver"
    )]
    WrongDriver {
        /// The file.
        path: String,
        /// Driver in the file.
        found: DriverKind,
        /// Driver of this agent.
        wanted: DriverKind,
    },
}

/// The state file on disk.
#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// The state file in `state_dir` (created 0700 if missing).
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        decnet_pki::secure_fs::ensure_private_dir(state_dir).map_err(|source| StateError::Io {
            what: "cannot create",
            path: state_dir.display().to_string(),
            source,
        })?;
        Ok(StateStore {
            path: state_dir.join(STATE_FILE),
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load the state, or an empty one when there is no file yet.
    pub fn load(&self, driver: DriverKind) -> Result<AgentState, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AgentState::new(driver));
            }
            Err(source) => {
                return Err(StateError::Io {
                    what: "cannot read",
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        let state: AgentState =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.display().to_string(),
                detail: e.to_string(),
            })?;
        if state.driver != driver && !state.deckies.is_empty() {
            return Err(StateError::WrongDriver {
                path: self.path.display().to_string(),
                found: state.driver,
                wanted: driver,
            });
        }
        Ok(AgentState { driver, ..state })
    }

    /// Write the state atomically (0600).
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        decnet_pki::secure_fs::write_atomic(&self.path, &bytes, 0o600).map_err(|source| {
            StateError::Io {
                what: "cannot write",
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name a heartbeat and the metrics give a phase is serde's (what
    /// `/status` shows), for every phase.
    #[test]
    fn a_phase_is_named_as_serde_writes_it() {
        use DeckyPhase::*;
        for p in [Pending, Running, Exited, Failed, TornDown] {
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::Value::from(p.as_str())
            );
        }
    }

    #[test]
    fn round_trip_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("s")).unwrap();
        let mut st = store.load(DriverKind::Process).unwrap();
        assert!(st.deckies.is_empty());
        st.deckies.insert(
            "a".into(),
            DeckyRecord {
                phase: DeckyPhase::Running,
                pid: Some(42),
                pid_start: Some(7),
                ..DeckyRecord::pending(
                    DeckyConfig {
                        name: "a".into(),
                        command: vec!["x".into()],
                        ..Default::default()
                    },
                    1,
                )
            },
        );
        store.save(&st).unwrap();
        let back = store.load(DriverKind::Process).unwrap();
        assert_eq!(back.deckies["a"].pid, Some(42));
        assert!(matches!(
            store.load(DriverKind::Compose),
            Err(StateError::WrongDriver { .. })
        ));
        std::fs::write(store.path(), b"{torn").unwrap();
        assert!(matches!(
            store.load(DriverKind::Process),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn operations_are_bounded_keeping_unfinished_ones() {
        let mut st = AgentState::new(DriverKind::Process);
        for i in 0..(KEEP_OPERATIONS + 10) {
            st.push_operation(Operation {
                id: i.to_string(),
                kind: OperationKind::Deploy,
                deckies: vec![],
                started_at: 0,
                finished_at: (i != 0).then_some(1),
                relocation: None,
            });
        }
        assert_eq!(st.operations.len(), KEEP_OPERATIONS);
        assert_eq!(st.operations[0].id, "0", "the unfinished operation is kept");
    }
}
