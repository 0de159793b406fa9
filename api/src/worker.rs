//! What the worker daemons answer the master (the agent's `/status`, its
//! deckies, its evidence list), defined once: the master's client of the
//! agent parses them and the fleet API passes them on to operators as
//! they are, so the three cannot drift.

use serde::{Deserialize, Serialize};

/// One decky as the agent reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeckyState {
    /// Name.
    pub name: String,
    /// `pending`, `running`, `exited`, `failed` or `torn_down`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Services.
    #[serde(default)]
    pub services: Vec<String>,
    /// Process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The uid it runs under (process driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its own address on the LAN (config version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The worker interface it sits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Restarts.
    #[serde(default)]
    pub restarts: u32,
    /// What the driver observes.
    #[serde(default)]
    pub observed: Option<serde_json::Value>,
}

/// `/status` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStatus {
    /// Host.
    pub host: String,
    /// Agent version.
    pub version: String,
    /// Driver.
    pub driver: String,
    /// How deckies are contained on that host (ids, limits, what enforces
    /// them); absent from agents that predate containment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<serde_json::Value>,
    /// Deckies.
    pub deckies: Vec<DeckyState>,
    /// The LAN the deckies are on and how the config was mapped onto the
    /// host (`network`, `relocation`); absent when no decky is on a LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<serde_json::Value>,
}

/// One evidence archive as the agent lists it (`GET /evidence`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvidenceArchive {
    /// The decky it came from.
    pub decky: String,
    /// Its id (the UTC time of the teardown, `20261205T141530Z`).
    pub id: String,
    /// Its size, compressed.
    pub bytes: u64,
}

/// `GET /evidence` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvidenceList {
    /// The archives, oldest first.
    pub archives: Vec<EvidenceArchive>,
    /// Whether the agent keeps evidence (the process driver, with
    /// `--evidence-keep` above 0).
    #[serde(default)]
    pub kept: bool,
}
