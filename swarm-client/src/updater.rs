//! [`UpdaterClient`]: the master's typed client of one worker's updater.
//!
//! Unlike the agent client it refuses to talk to an updater whose
//! fingerprint the master has not recorded (fail closed): pushing code is
//! the most dangerous thing the master does.

use std::path::Path;
use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};

use crate::transport::expect_worker;
use serde::{Deserialize, Serialize};

use crate::transport::{ClientError, Endpoint, WorkerPool};

/// Timeout of quick calls.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of an upload + install + probe (+ revert).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(600);

/// One installed release.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Release {
    /// Slot id.
    pub slot: String,
    /// Release label.
    pub sha: String,
    /// Tarball SHA-256.
    pub sha256: String,
    /// Install time (unix seconds).
    pub installed_at: i64,
}

/// `/health` answer.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct UpdaterHealth {
    /// `updater`.
    pub role: String,
    /// Host.
    pub host: String,
    /// Updater version.
    pub version: String,
    /// Releases, active first.
    pub releases: Vec<Release>,
    /// Whether the agent runs.
    #[serde(default)]
    pub agent_running: bool,
    /// Identity of this updater process (changes when it re-executes).
    #[serde(default)]
    pub instance: Option<String>,
    /// The updater release this process runs, `None` for the packaged
    /// updater (or one too old to say).
    #[serde(default)]
    pub updater_release: Option<Release>,
}

/// The updater's answer to `POST /renew`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RenewalRequested {
    /// Its renewal task was woken.
    pub renewing: bool,
}

/// A successful update or rollback.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct UpdateDone {
    /// `updated`, `rolled_back` or `restarting`.
    pub status: String,
    /// The active release.
    pub release: Option<Release>,
    /// The probe.
    #[serde(default)]
    pub probe: Option<serde_json::Value>,
}

/// The outcome of a push.
#[derive(Clone, Debug)]
pub enum UpdateOutcome {
    /// Live and healthy.
    Updated(UpdateDone),
    /// Unhealthy; the previous release was restored (409).
    RolledBack(serde_json::Value),
}

/// A release to push.
#[derive(Clone, Debug)]
pub struct ReleaseUpload<'a> {
    /// The tarball.
    pub tarball: &'a Path,
    /// Label.
    pub sha: &'a str,
    /// Tarball SHA-256, hex.
    pub sha256: &'a str,
    /// Its manifests (one per target daemon; signed or not).
    pub manifests: &'a [decnet_pki::signing::SignedManifest],
    /// Install even when the version is lower than the active one.
    pub allow_downgrade: bool,
}

/// Typed client of one updater.
#[derive(Clone, Debug)]
pub struct UpdaterClient {
    ep: Endpoint,
}

impl UpdaterClient {
    /// A client of `host`'s updater, which must present a certificate of
    /// role Updater(`host`) that is one of `pins`; no pins is refused (fail
    /// closed).
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
        if pins.is_empty() {
            return Err(ClientError::Setup(format!(
                "no updater certificate is recorded for {host}; issue one with `decnet swarm token create --host {host} --address ADDR --updater` (or `decnet swarm enroll --host {host} --address ADDR --updater --reissue`)"
            )));
        }
        Ok(UpdaterClient {
            ep: pool.endpoint(
                &format!("updater {host} ({address}:{port})"),
                address,
                port,
                &expect_worker(host, true, pins)?,
            ),
        })
    }

    /// `GET /health` (at most [`crate::agent::MAX_HEALTH_ANSWER`] bytes).
    pub async fn health(&self) -> Result<UpdaterHealth, ClientError> {
        self.ep
            .send_json_within(
                self.ep.http().get(self.ep.url("/health")),
                QUICK_TIMEOUT,
                crate::agent::MAX_HEALTH_ANSWER,
            )
            .await
    }

    /// `GET /releases`.
    pub async fn releases(&self) -> Result<Vec<Release>, ClientError> {
        #[derive(Deserialize)]
        struct A {
            releases: Vec<Release>,
        }
        let a: A = self
            .ep
            .send_json(self.ep.http().get(self.ep.url("/releases")), QUICK_TIMEOUT)
            .await?;
        Ok(a.releases)
    }

    fn form(
        up: &ReleaseUpload<'_>,
        target: decnet_pki::signing::ReleaseTarget,
    ) -> Result<reqwest::multipart::Form, ClientError> {
        // Streamed from the file, not read whole: a rollout pushes to many
        // updaters at once (`--max-parallel`, up to 1,024), and a release
        // may be 1 GiB.
        let unreadable = |e: std::io::Error| {
            ClientError::Setup(format!("cannot read {}: {e}", up.tarball.display()))
        };
        let file = std::fs::File::open(up.tarball).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        let chunks =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 64 * 1024);
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), len)
                .file_name("release.tar.gz")
                .mime_str("application/gzip")
                .map_err(|e| ClientError::Setup(e.to_string()))?;
        // The text fields go first: an updater checks a signed manifest
        // before the tarball arrives, and then extracts while it streams in.
        let mut form = reqwest::multipart::Form::new()
            .text("sha", up.sha.to_string())
            .text("sha256", up.sha256.to_string());
        if let Some(m) = up
            .manifests
            .iter()
            .find(|m| m.parse().is_ok_and(|p| p.target == target))
        {
            form = form.text("manifest", m.manifest.clone());
            if let Some(sig) = &m.signature {
                form = form.text("signature", sig.clone());
            }
        }
        if up.allow_downgrade {
            form = form.text("allow_downgrade", "true");
        }
        // A self-update is confirmed before its tarball: the updater
        // extracts an unconfirmed one only after receiving it whole.
        if target == decnet_pki::signing::ReleaseTarget::Updater {
            form = form.text("confirm_self", "true");
        }
        Ok(form.part("tarball", part))
    }

    /// `POST /update`: install, probe, and (on failure) revert.
    pub async fn update(&self, up: &ReleaseUpload<'_>) -> Result<UpdateOutcome, ClientError> {
        let req = self
            .ep
            .http()
            .post(self.ep.url("/update"))
            .multipart(Self::form(up, decnet_pki::signing::ReleaseTarget::Agent)?);
        match self.ep.send_json::<UpdateDone>(req, UPDATE_TIMEOUT).await {
            Ok(done) => Ok(UpdateOutcome::Updated(done)),
            Err(ClientError::Status {
                status: 409,
                body: Some(body),
                ..
            }) => Ok(UpdateOutcome::RolledBack(body)),
            Err(e) => Err(e),
        }
    }

    /// `POST /renew`: the updater renews its certificate with the master now
    /// (`decnet swarm renew`); it answers as soon as its renewal task is woken.
    pub async fn renew(&self) -> Result<RenewalRequested, ClientError> {
        self.ep
            .send_json(self.ep.http().post(self.ep.url("/renew")), QUICK_TIMEOUT)
            .await
    }

    /// `POST /rollback`.
    pub async fn rollback(&self) -> Result<UpdateDone, ClientError> {
        self.ep
            .send_json(
                self.ep.http().post(self.ep.url("/rollback")),
                UPDATE_TIMEOUT,
            )
            .await
    }

    /// `POST /update-self`, then wait until a new updater process answers
    /// (a dropped connection counts as "restarting").
    pub async fn update_self(
        &self,
        up: &ReleaseUpload<'_>,
        deadline: Duration,
    ) -> Result<UpdaterHealth, ClientError> {
        let before = self.health().await?.instance;
        let form = Self::form(up, decnet_pki::signing::ReleaseTarget::Updater)?;
        let req = self
            .ep
            .http()
            .post(self.ep.url("/update-self"))
            .multipart(form);
        match self.ep.send_json::<UpdateDone>(req, UPDATE_TIMEOUT).await {
            Ok(_) => {}
            Err(e) if e.is_unreachable() || matches!(e, ClientError::Tls { .. }) => {}
            Err(e) => return Err(e),
        }
        let end = tokio::time::Instant::now() + deadline;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Ok(h) = self.health().await
                && h.instance != before
            {
                return Ok(h);
            }
            if tokio::time::Instant::now() > end {
                return Err(ClientError::Timeout {
                    endpoint: self.ep.label().to_string(),
                    secs: deadline.as_secs(),
                });
            }
        }
    }
}
