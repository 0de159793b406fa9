//! A worker's link to the master's control API: heartbeats, certificate
//! renewal and revocation-list refreshes, over mTLS with the worker's live
//! [`TlsMaterial`](decnet_pki::TlsMaterial), to a server that must prove it
//! is the master.
//!
//! One kept-alive HTTP client is built per material and rebuilt only when
//! the material changes (a renewal, a new CRL) or after a refusal, so a
//! heartbeat every 30 s costs the master no new handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decnet_pki::{
    Bundle, BundleKind, ExpectedServer, Fingerprint, MaterialSource, RevocationList, TlsMaterial,
};

use crate::transport::error_chain;

/// Timeout of one call to the master.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The client could not be built from the material.
    #[error("cannot build the client: {0}")]
    Setup(String),
    /// Network or TLS failure (including a server that is not the master).
    #[error("cannot reach the master at {master}: {detail}")]
    Unreachable {
        /// Where.
        master: String,
        /// The whole error chain.
        detail: String,
    },
    /// The master answered with an error status.
    #[error("the master refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `detail` of the body.
        detail: String,
    },
    /// The answer is unusable (and nothing was written).
    #[error("the master's answer is unusable: {0}")]
    BadAnswer(String),
    /// Writing the new bundle or CRL failed (the old one stays in use).
    #[error("{0}")]
    Local(String),
}

pub use decnet_api::worker::{Heartbeat, HeartbeatAnswer, ReportedDecky};

/// Whether a heartbeat `answer` says the master trusts another set of CAs
/// than the `held` one (fetch it).
pub fn trust_moved(answer: &HeartbeatAnswer, held: &str) -> bool {
    answer
        .trust
        .as_deref()
        .is_some_and(|t| t != decnet_pki::trust::digest(held))
}

/// What a revocation-list refresh found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// A newer list (or trust set) is in force.
    pub changed: bool,
    /// The master asks for a renewal (a CA rotation: our certificate is
    /// signed by the CA on its way out).
    pub renew: bool,
}

struct Cached {
    material: Arc<TlsMaterial>,
    client: reqwest::Client,
}

/// The link. Cheap to share (`Arc`).
pub struct MasterLink {
    master: String,
    material: MaterialSource,
    pin: Option<Fingerprint>,
    client: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for MasterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterLink")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl MasterLink {
    /// A link to the control API at `master` (`host:port`), with the
    /// worker's `material`, optionally pinning the master's fingerprint.
    pub fn new(master: String, material: MaterialSource, pin: Option<Fingerprint>) -> Arc<Self> {
        Arc::new(MasterLink {
            master,
            material,
            pin,
            client: Mutex::new(None),
        })
    }

    /// The master's address.
    pub fn master(&self) -> &str {
        &self.master
    }

    /// The worker's material.
    pub fn material(&self) -> &MaterialSource {
        &self.material
    }

    fn expected(&self) -> ExpectedServer {
        ExpectedServer::master().pinned(self.pin)
    }

    /// The kept-alive client for the material in force.
    fn client(&self) -> Result<reqwest::Client, LinkError> {
        let material = self.material.current();
        let mut cached = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref()
            && Arc::ptr_eq(&c.material, &material)
        {
            return Ok(c.client.clone());
        }
        let cfg = material
            .client_config(&self.expected())
            .map_err(|e| LinkError::Setup(e.to_string()))?;
        let client =
            crate::transport::http_client(cfg, Duration::from_secs(5), Some(CALL_TIMEOUT), true)
                .map_err(|e| LinkError::Setup(e.to_string()))?;
        *cached = Some(Cached {
            material,
            client: client.clone(),
        });
        Ok(client)
    }

    /// Forget the kept-alive client (after a refusal: the next call
    /// handshakes afresh).
    fn reset(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn call(
        &self,
        req: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, LinkError> {
        let client = self.client()?;
        let resp = match req(&client).send().await {
            Ok(r) => r,
            Err(e) => {
                self.reset();
                return Err(LinkError::Unreachable {
                    master: self.master.clone(),
                    detail: error_chain(&e),
                });
            }
        };
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            self.reset();
            LinkError::Unreachable {
                master: self.master.clone(),
                detail: error_chain(&e),
            }
        })?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !status.is_success() {
            self.reset();
            return Err(LinkError::Refused {
                status: status.as_u16(),
                detail: body["detail"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.master)
    }

    /// `POST /heartbeat` with `body` (a [`Heartbeat`]; tests and benches
    /// may send other shapes).
    pub async fn heartbeat(
        &self,
        body: &impl serde::Serialize,
    ) -> Result<HeartbeatAnswer, LinkError> {
        let url = self.url("/heartbeat");
        let v = self.call(|c| c.post(url).json(body)).await?;
        serde_json::from_value(v).map_err(|e| LinkError::BadAnswer(e.to_string()))
    }

    /// Renew the certificate: a fresh key generated here, a CSR to
    /// `POST /renew`, the answer checked (chains to our CA, our new key, our
    /// CN) and only then written to `dir` as one unit and put in force.
    pub async fn renew(&self, dir: &Path) -> Result<Bundle, LinkError> {
        let current = self.material.current();
        let bundle = current.bundle();
        let (key_pem, csr) = decnet_pki::ca::generate_csr(&bundle.identity.cn)
            .map_err(|e| LinkError::Local(format!("cannot generate a key: {e}")))?;
        let url = self.url("/renew");
        let body = serde_json::json!({ "csr": csr });
        let v = self.call(|c| c.post(url).json(&body)).await?;
        let cert_pem = v["cert_pem"]
            .as_str()
            .ok_or_else(|| LinkError::BadAnswer("no certificate in the answer".into()))?;
        let identity = decnet_pki::PeerIdentity::from_pem(cert_pem)
            .map_err(|e| LinkError::BadAnswer(e.to_string()))?;
        let mut new = Bundle {
            kind: bundle.kind,
            cert_pem: cert_pem.to_string(),
            key_pem,
            ca_pem: bundle.ca_pem.clone(),
            identity,
        };
        if new.verify(&bundle.identity.role).is_err() {
            // Signed by a CA we do not trust yet (a rotation we have not
            // caught up with): take the master's trust set the one way a
            // set is ever taken, then check again.
            if let Some(offered) = v["ca_pem"].as_str() {
                new.ca_pem = decnet_pki::trust::accept(
                    &bundle.ca_pem,
                    offered,
                    v["endorsements_pem"].as_str().unwrap_or_default(),
                )
                .map_err(|e| LinkError::BadAnswer(e.to_string()))?;
            }
        }
        new.verify(&bundle.identity.role)
            .map_err(|e| LinkError::BadAnswer(e.to_string()))?;
        new.write(dir)
            .map_err(|e| LinkError::Local(format!("cannot write the renewed bundle: {e}")))?;
        self.material
            .set_bundle(new.clone())
            .map_err(|e| LinkError::Local(format!("cannot use the renewed bundle: {e}")))?;
        Ok(new)
    }

    /// Fetch the master's CRL (`GET /crl`); when it is newer than the one
    /// in force and signed by a CA we trust, store it beside the bundle in
    /// `dir` and enforce it. When the master trusts another set of CAs
    /// than we do (a CA rotation moved), the set is fetched and taken first
    /// ([`sync_trust`](Self::sync_trust)).
    pub async fn refresh_crl(&self, dir: &Path) -> Result<Refreshed, LinkError> {
        let url = self.url("/crl");
        let v = self.call(|c| c.get(url)).await?;
        let mut changed = false;
        if let Some(digest) = v["trust"].as_str()
            && digest != decnet_pki::trust::digest(&self.material.current().bundle().ca_pem)
        {
            // A set we may not take leaves the one in force, and the lists
            // of its CAs still reach us.
            match self.sync_trust(dir).await {
                Ok(c) => changed |= c,
                Err(e) => tracing::warn!(error = %e, "the master's trust set was not taken"),
            }
        }
        let renew = v["renew"].as_bool().unwrap_or(false);
        let pem = v["crl_pem"]
            .as_str()
            .ok_or_else(|| LinkError::BadAnswer("no CRL in the answer".into()))?;
        let current = self.material.current();
        let crl = RevocationList::verify_pem(pem, &current.bundle().ca_pem)
            .map_err(|e| LinkError::BadAnswer(e.to_string()))?;
        // The same number may come with more lists (one per CA of a
        // rotation, once we trust both): only an older number is skipped.
        if current
            .crl()
            .is_some_and(|c| c.number() > crl.number() || *c == crl)
        {
            return Ok(Refreshed { changed, renew });
        }
        Bundle::save_crl(dir, &crl).map_err(|e| LinkError::Local(e.to_string()))?;
        let set = self
            .material
            .set_crl(crl)
            .map_err(|e| LinkError::Local(e.to_string()))?;
        if set {
            tracing::info!(
                number = self.material.current().crl().map(|c| c.number()),
                "revocation list updated"
            );
        }
        Ok(Refreshed {
            changed: changed || set,
            renew,
        })
    }

    /// Fetch the master's trust set (`GET /trust`) and take it if
    /// [`decnet_pki::trust::accept`] allows (every new CA endorsed by one we
    /// trust) and our own certificate still chains to it; written beside
    /// the certificate as one unit, then in force. Returns whether anything
    /// changed. A set we may not take is refused and the one in force kept.
    pub async fn sync_trust(&self, dir: &Path) -> Result<bool, LinkError> {
        let url = self.url("/trust");
        let v = self.call(|c| c.get(url)).await?;
        let offered = v["trust_pem"]
            .as_str()
            .ok_or_else(|| LinkError::BadAnswer("no trust set in the answer".into()))?;
        let endorsements = v["endorsements_pem"].as_str().unwrap_or_default();
        let current = self.material.current();
        let held = current.bundle();
        if decnet_pki::trust::digest(offered) == decnet_pki::trust::digest(&held.ca_pem) {
            return Ok(false);
        }
        let ca_pem = decnet_pki::trust::accept(&held.ca_pem, offered, endorsements)
            .map_err(|e| LinkError::BadAnswer(e.to_string()))?;
        let mut next = held.clone();
        next.ca_pem = ca_pem;
        next.verify(&held.identity.role).map_err(|e| {
            LinkError::BadAnswer(format!(
                "the master's trust set no longer trusts this host's own certificate ({e}); keeping the one in force"
            ))
        })?;
        next.write(dir)
            .map_err(|e| LinkError::Local(format!("cannot write the trust set: {e}")))?;
        self.material
            .set_bundle(next)
            .map_err(|e| LinkError::Local(format!("cannot use the trust set: {e}")))?;
        tracing::info!(
            cas = decnet_pki::trust::fingerprints(&self.material.current().bundle().ca_pem).len(),
            "trust set updated (CA rotation)"
        );
        Ok(true)
    }
}

/// Load a worker's material from its bundle directory: the bundle and the
/// CRL stored beside it.
pub fn load_material(dir: &Path, kind: BundleKind) -> Result<MaterialSource, String> {
    let bundle = Bundle::load(dir, kind).map_err(|e| e.to_string())?;
    let crl = bundle.load_crl(dir);
    MaterialSource::from_parts(bundle, crl).map_err(|e| e.to_string())
}

/// When the certificate of `bundle` should be renewed: at about 2/3 of its
/// lifetime (±5 % jitter so a fleet enrolled at once does not renew at once).
pub fn renewal_due(bundle: &Bundle) -> time::OffsetDateTime {
    // Our CA backdates notBefore by CLOCK_SKEW; count the lifetime from
    // the issue time, or short-lived certificates would renew at once.
    let mut nb = bundle.identity.not_before;
    if bundle.identity.not_after - nb > decnet_pki::ca::CLOCK_SKEW {
        nb += decnet_pki::ca::CLOCK_SKEW;
    }
    let life = bundle.identity.not_after - nb;
    nb + life * ((2.0 / 3.0) + (unit_random() - 0.5) * 0.1)
}

/// A uniform random number in [0, 1).
pub fn unit_random() -> f64 {
    u64::from_str_radix(&decnet_pki::random_hex(2), 16).unwrap_or(0) as f64 / 65536.0
}

/// Keep the certificate renewed, forever: at [`renewal_due`], or at once
/// when `renew_now` is notified. Failures are retried sooner as expiry
/// approaches, or at once when the master asks again.
///
/// One answer of the master can wake `renew_now` twice (the heartbeat's
/// `renew`, and the CRL fetch its trust change starts): a request stored
/// while a renewal ran was for the certificate that renewal replaced, and
/// is dropped. It used to start a second renewal at once, which the master
/// refused as too soon (`429`), and the retry then slept up to 60 s deaf to
/// the master asking again (a CA rotation's abort waited past its
/// `--wait`).
pub async fn keep_renewed(
    link: Arc<MasterLink>,
    dir: PathBuf,
    renew_now: Arc<tokio::sync::Notify>,
) {
    let role = link
        .material()
        .current()
        .bundle()
        .identity
        .role
        .kind()
        .to_string();
    for outcome in ["renewed", "failed"] {
        let _ = renewal_metrics().get_or_create(&RenewalLabels {
            role: role.clone(),
            outcome: outcome.into(),
        });
    }
    loop {
        let bundle = link.material().current().bundle().clone();
        let wait =
            (renewal_due(&bundle) - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(wait.as_seconds_f64())) => {}
            _ = renew_now.notified() => tracing::info!("the master asked for a certificate renewal"),
        }
        let role = role.clone();
        let renewed = link.renew(&dir).await;
        renewal_metrics()
            .get_or_create(&RenewalLabels {
                role,
                outcome: if renewed.is_ok() { "renewed" } else { "failed" }.into(),
            })
            .inc();
        match renewed {
            Ok(new) => {
                tracing::info!(
                    fingerprint = %new.identity.fingerprint,
                    not_after = %new.identity.not_after,
                    "certificate renewed and now in use"
                );
                // Present the new certificate at once: the master makes it
                // current (and starts retiring the old one) when it first sees it.
                if let Err(e) = link.refresh_crl(&dir).await.map(|_| ()) {
                    tracing::warn!(error = %e, "could not confirm the renewed certificate with the master yet");
                }
                // A request stored meanwhile was for the certificate just
                // replaced: drop it (the master asks again if it wants more).
                let _ = tokio::time::timeout(Duration::ZERO, renew_now.notified()).await;
            }
            Err(e) => {
                let left = (bundle.identity.not_after - time::OffsetDateTime::now_utc())
                    .whole_seconds()
                    .max(1) as u64;
                let retry = Duration::from_secs((left / 10).clamp(1, 60));
                tracing::warn!(error = %e, retry_in = ?retry, "certificate renewal failed");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = renew_now.notified() => tracing::info!("the master asked again for a certificate renewal"),
                }
            }
        }
    }
}

/// `role`, `outcome` of `decnet_certificate_renewals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RenewalLabels {
    /// The renewing certificate's role (`agent`, `updater`).
    pub role: String,
    /// `renewed` or `failed`.
    pub outcome: String,
}

/// `decnet_certificate_renewals_total{role,outcome}`: this worker's
/// renewal attempts, registered on first use.
pub fn renewal_metrics() -> &'static prometheus_client::metrics::family::Family<
    RenewalLabels,
    prometheus_client::metrics::counter::Counter,
> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    static M: std::sync::OnceLock<Family<RenewalLabels, Counter>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let f = Family::default();
        decnet_telemetry::metrics::register(
            "decnet_certificate_renewals",
            "Renewals of this process's certificate with the master, by outcome",
            f.clone(),
        );
        f
    })
}

/// Refresh the CRL every `every` (the updater, which sends no heartbeats),
/// or at once when `now` is notified (the agent, when a heartbeat answer
/// names a newer CRL).
pub async fn keep_crl_fresh(
    link: Arc<MasterLink>,
    dir: PathBuf,
    every: Duration,
    now: Arc<tokio::sync::Notify>,
    renew_now: Option<Arc<tokio::sync::Notify>>,
) {
    loop {
        match link.refresh_crl(&dir).await {
            Ok(r) => {
                if r.renew
                    && let Some(n) = &renew_now
                {
                    n.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot refresh the revocation list"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = now.notified() => {}
        }
    }
}
