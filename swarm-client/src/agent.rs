//! [`AgentClient`]: the master's typed client of one worker's agent.

use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};

use crate::transport::expect_worker;
use serde::Deserialize;

use crate::transport::{ClientError, Endpoint, WorkerPool};

// What the agent answers is defined once, in the API crate: the fleet API
// passes these on to operators as they are.
pub use decnet_api::worker::{AgentStatus, DeckyState, EvidenceArchive, EvidenceList};

/// Timeout of quick calls (health, status, operations).
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of calls that stop or start workloads.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest `/health` answer read: a few fields.
pub const MAX_HEALTH_ANSWER: usize = 64 * 1024;

/// The largest `/status` answer read: the decky states (the master stores
/// at most 1 MiB of them), the LAN and the containment of the host. The
/// master asks every worker at once and holds the answers until the last
/// is in, so a hostile worker's answer is kept small.
pub const MAX_STATUS_ANSWER: usize = 4 << 20;

/// The largest `/operations/{id}` answer read: the deckies of one
/// operation (a deployment has at most 256) and how the LAN was mapped.
/// A deploy polls every host it waits for at once.
pub const MAX_OPERATION_ANSWER: usize = 4 << 20;

/// The largest dry-run answer read: the plan rendered for one config (at
/// most 256 deckies). A dry run keeps every host's plan until the last.
pub const MAX_PLAN_ANSWER: usize = 4 << 20;

/// A dry run's answer: the rendered plan, kept as the agent's text (other
/// fields skipped).
#[derive(Deserialize)]
struct DryRunAnswer {
    #[serde(default)]
    rendered: Option<decnet_api::RawJson>,
}

/// The largest `/teardown` answer read: the names of the deckies torn down.
pub const MAX_TEARDOWN_ANSWER: usize = 1 << 20;

/// `202` answer of a deploy.
#[derive(Clone, Debug, Deserialize)]
pub struct DeployAccepted {
    /// The operation to poll.
    pub operation_id: String,
}

/// `/operations/{id}` answer.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct OperationState {
    /// Id.
    pub id: String,
    /// Whether it finished.
    pub done: bool,
    /// Its deckies.
    pub deckies: Vec<DeckyState>,
    /// How the agent mapped a LAN config onto its worker's network, if it
    /// had to (`reason`, `from_parent`, `from_subnet`, `to_parent`,
    /// `to_subnet`, `to_gateway`, `addresses`).
    /// Kept as the text sent ([`decnet_api::RawJson`]); the master reads
    /// only [`decnet_api::worker::RelocationSummary`] out of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation: Option<decnet_api::RawJson>,
}

/// `/health` answer.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct AgentHealth {
    /// `ok`.
    pub status: String,
    /// `agent`.
    pub role: String,
    /// Host (CN).
    pub host: String,
    /// Version.
    pub version: String,
    /// Driver.
    #[serde(default)]
    pub driver: Option<String>,
}

/// The largest evidence archive fetched (the agent bounds its archive to
/// `--evidence-max-mb`; this bounds what a compromised agent can send).
pub const MAX_EVIDENCE: u64 = 64 << 30;

/// Timeout of an evidence download.
pub const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Typed client of one agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    ep: Endpoint,
}

impl AgentClient {
    /// A client of `host`'s agent at `address:port`, presenting the master
    /// `bundle`; the agent must present a certificate of role Agent(`host`)
    /// and, when `pins` is not empty, one of them (the recorded agent
    /// fingerprints).
    pub fn new(
        host: &str,
        master: &Bundle,
        address: &str,
        port: u16,
        pins: Vec<Fingerprint>,
    ) -> Result<Self, ClientError> {
        Self::in_pool(&WorkerPool::new(master)?, host, address, port, pins)
    }

    /// The same, reached through `pool` (a fleet-wide command's one TLS
    /// configuration and HTTP client).
    pub fn in_pool(
        pool: &WorkerPool,
        host: &str,
        address: &str,
        port: u16,
        pins: Vec<Fingerprint>,
    ) -> Result<Self, ClientError> {
        Ok(AgentClient {
            ep: pool.endpoint(
                &format!("agent {host} ({address}:{port})"),
                address,
                port,
                &expect_worker(host, false, pins)?,
            ),
        })
    }

    /// `GET /health` (at most [`MAX_HEALTH_ANSWER`] bytes).
    pub async fn health(&self) -> Result<AgentHealth, ClientError> {
        self.ep
            .send_json_within(
                self.ep.http().get(self.ep.url("/health")),
                QUICK_TIMEOUT,
                MAX_HEALTH_ANSWER,
            )
            .await
    }

    /// `GET /status` (at most [`MAX_STATUS_ANSWER`] bytes).
    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        self.ep
            .send_json_within(
                self.ep.http().get(self.ep.url("/status")),
                QUICK_TIMEOUT,
                MAX_STATUS_ANSWER,
            )
            .await
    }

    /// `POST /deploy`: returns the operation id.
    pub async fn deploy(&self, config: &serde_json::Value) -> Result<DeployAccepted, ClientError> {
        let body = serde_json::json!({ "config": config, "dry_run": false });
        self.ep
            .send_json(
                self.ep.http().post(self.ep.url("/deploy")).json(&body),
                LONG_TIMEOUT,
            )
            .await
    }

    /// `POST /deploy` with `dry_run`: the rendered plan (at most
    /// [`MAX_PLAN_ANSWER`] bytes; JSON `null` when the agent sent none).
    pub async fn dry_run(
        &self,
        config: &serde_json::Value,
    ) -> Result<decnet_api::RawJson, ClientError> {
        let body = serde_json::json!({ "config": config, "dry_run": true });
        let answer: DryRunAnswer = self
            .ep
            .send_json_within(
                self.ep.http().post(self.ep.url("/deploy")).json(&body),
                LONG_TIMEOUT,
                MAX_PLAN_ANSWER,
            )
            .await?;
        Ok(answer
            .rendered
            .unwrap_or_else(|| decnet_api::RawJson::from_value(&serde_json::Value::Null)))
    }

    /// `GET /operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<OperationState, ClientError> {
        self.ep
            .send_json_within(
                self.ep
                    .http()
                    .get(self.ep.url(&format!("/operations/{id}"))),
                QUICK_TIMEOUT,
                MAX_OPERATION_ANSWER,
            )
            .await
    }

    /// `POST /teardown`: one decky or all.
    pub async fn teardown(&self, decky: Option<&str>) -> Result<Vec<String>, ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            torn_down: Vec<String>,
        }
        let body = serde_json::json!({ "decky_id": decky });
        let a: Answer = self
            .ep
            .send_json_within(
                self.ep.http().post(self.ep.url("/teardown")).json(&body),
                LONG_TIMEOUT,
                MAX_TEARDOWN_ANSWER,
            )
            .await?;
        Ok(a.torn_down)
    }

    /// `GET /evidence`.
    pub async fn evidence(&self) -> Result<EvidenceList, ClientError> {
        self.ep
            .send_json(self.ep.http().get(self.ep.url("/evidence")), QUICK_TIMEOUT)
            .await
    }

    /// `GET /evidence/{decky}/{id}`: the archive (gzipped tar) written to
    /// `out`; returns its size.
    pub async fn fetch_evidence(
        &self,
        decky: &str,
        id: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        self.fetch_evidence_within(decky, id, out, MAX_EVIDENCE)
            .await
    }

    /// [`fetch_evidence`](Self::fetch_evidence) refusing an archive larger
    /// than `max` bytes (what the master spools for an operator).
    pub async fn fetch_evidence_within(
        &self,
        decky: &str,
        id: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        max: u64,
    ) -> Result<u64, ClientError> {
        let url = self.ep.url(&format!("/evidence/{decky}/{id}"));
        self.ep
            .download(
                self.ep.http().get(url),
                EVIDENCE_TIMEOUT,
                out,
                max.min(MAX_EVIDENCE),
            )
            .await
    }

    /// `POST /mutate`.
    pub async fn mutate(
        &self,
        decky: &str,
        services: &[String],
    ) -> Result<DeckyState, ClientError> {
        let body = serde_json::json!({ "decky_id": decky, "services": services });
        self.ep
            .send_json(
                self.ep.http().post(self.ep.url("/mutate")).json(&body),
                LONG_TIMEOUT,
            )
            .await
    }
}
