//! Enrollment: issue a worker's agent (and updater) bundle from the CA, keep
//! the master's copy under `<ca>/workers/<host>/`, and record the host, its
//! fingerprints and the certificate ledger in the fleet database — in one
//! transaction that also revokes every earlier certificate of the host.
//!
//! A re-enrollment (`--reissue`) keeps what the operator did not restate:
//! the address and ports the master dials and the recorded SANs.

use std::path::{Path, PathBuf};

use decnet_pki::{Bundle, BundleKind, CaLayout, CertificateAuthority, HostName, LeafSpec, Role};

use crate::db::{DbError, FleetDb, unix_now};
use crate::model::{CertRecord, CertRole, HostRecord, HostStatus};

/// Default agent port.
pub const AGENT_PORT: u16 = 8765;
/// Default updater port.
pub const UPDATER_PORT: u16 = 8766;

/// Why an enrollment was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Invalid host name.
    #[error(transparent)]
    HostName(#[from] decnet_pki::HostNameError),
    /// The host is already enrolled.
    #[error(
        "host {host} is already enrolled; to issue fresh certificates (the old ones are revoked) run: decnet swarm enroll --host {host} --reissue{updater}"
    )]
    AlreadyEnrolled {
        /// The host.
        host: String,
        /// ` --updater` when the request asked for one.
        updater: &'static str,
    },
    /// A new host needs an address.
    #[error("--address is required to enroll a new host")]
    NoAddress,
    /// An invalid SAN or address.
    #[error(transparent)]
    Ca(#[from] decnet_pki::CaError),
    /// Writing a bundle failed.
    #[error(transparent)]
    Bundle(#[from] decnet_pki::BundleError),
    /// The fleet database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The issued certificate could not be read back (should never happen).
    #[error("issued certificate is unreadable: {0}")]
    Identity(#[from] decnet_pki::IdentityError),
    /// The master's address could not be recorded beside a bundle.
    #[error("cannot record the master's address beside the bundle: {0}")]
    RecordMaster(#[from] std::io::Error),
}

impl EnrollError {
    /// Whether this is the operator's mistake (usage), not a failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            EnrollError::AlreadyEnrolled { .. }
                | EnrollError::HostName(_)
                | EnrollError::NoAddress
                | EnrollError::Ca(decnet_pki::CaError::BadSan(_))
        )
    }
}

/// What the operator asked for.
#[derive(Clone, Debug, Default)]
pub struct EnrollRequest {
    /// Host name (becomes the agent CN).
    pub host: String,
    /// Address the master dials (IP or DNS name); also a SAN. Required for
    /// a new host; a reissue keeps the recorded one when `None`.
    pub address: Option<String>,
    /// Extra SANs; a reissue keeps the recorded ones when empty.
    pub sans: Vec<String>,
    /// Also issue the updater bundle.
    pub updater: bool,
    /// Replace an existing enrollment.
    pub reissue: bool,
    /// Write the bundles here only (`<out>/agent/`, `<out>/updater/`), ready
    /// to be copied to the worker's `~/.decnet/`: no copy of the keys stays
    /// under the CA directory (nor in the master's backups).
    pub out_dir: Option<PathBuf>,
    /// The master's control API (`host:port`) recorded in each bundle, so
    /// the worker heartbeats, renews and fetches revocations there without
    /// a `--master` (as a joined worker does).
    pub master: Option<String>,
    /// Agent port (default 8765; a reissue keeps the recorded one).
    pub agent_port: Option<u16>,
    /// Updater port (default 8766; a reissue keeps the recorded one).
    pub updater_port: Option<u16>,
    /// Certificate validity (default 825 days).
    pub validity: Option<std::time::Duration>,
}

/// The standard leaf for `role`, with `validity` when given.
fn leaf_spec(
    role: &Role,
    sans: &[String],
    validity: Option<std::time::Duration>,
) -> Result<LeafSpec, EnrollError> {
    let spec = LeafSpec::for_role(role, sans);
    match validity {
        Some(v) => {
            let now = time::OffsetDateTime::now_utc();
            let v = time::Duration::try_from(v)
                .ok()
                .and_then(|v| now.checked_add(v))
                .ok_or(EnrollError::Ca(decnet_pki::CaError::BadValidity))?;
            Ok(spec.with_validity(now - decnet_pki::ca::CLOCK_SKEW, v))
        }
        None => Ok(spec),
    }
}

/// The result of an enrollment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EnrollOutcome {
    /// The host record as stored.
    pub host: HostRecord,
    /// Where the master keeps the agent bundle.
    pub agent_bundle_dir: PathBuf,
    /// Where the master keeps the updater bundle, if issued.
    pub updater_bundle_dir: Option<PathBuf>,
    /// Fingerprints revoked by this (re-)enrollment.
    pub revoked: Vec<String>,
}

/// Enroll one host: issue, write, record.
pub async fn enroll(
    ca: &CertificateAuthority,
    layout: &CaLayout,
    db: &FleetDb,
    req: &EnrollRequest,
) -> Result<EnrollOutcome, EnrollError> {
    let host = HostName::new(&req.host)?;
    let existing = db
        .host(host.as_str())
        .await?
        .filter(|h| h.status != HostStatus::Decommissioned);
    if existing.is_some() && !req.reissue {
        return Err(EnrollError::AlreadyEnrolled {
            host: host.to_string(),
            updater: if req.updater { " --updater" } else { "" },
        });
    }
    let address = match (&req.address, &existing) {
        (Some(a), _) => a.trim().to_string(),
        (None, Some(old)) => old.address.clone(),
        (None, None) => return Err(EnrollError::NoAddress),
    };
    let extra: Vec<String> = req
        .sans
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut sans = vec![address.clone()];
    match &existing {
        // A reissue without new SANs keeps the recorded ones (bar the old
        // address when it changed).
        Some(old) if extra.is_empty() => sans.extend(
            old.sans
                .iter()
                .filter(|s| **s != old.address && !s.eq_ignore_ascii_case(host.as_str()))
                .cloned(),
        ),
        _ => sans.extend(extra),
    }
    sans.dedup();
    for s in &sans {
        decnet_pki::ca::validate_san(s)?;
    }
    let agent_leaf = ca.issue(&leaf_spec(&Role::Agent(host.clone()), &sans, req.validity)?)?;
    let agent_bundle = Bundle::from_issued(BundleKind::Agent, &agent_leaf, ca.trust_pem())?;
    let updater = if req.updater {
        let leaf = ca.issue(&leaf_spec(
            &Role::Updater(host.clone()),
            &sans,
            req.validity,
        )?)?;
        Some((
            Bundle::from_issued(BundleKind::Updater, &leaf, ca.trust_pem())?,
            leaf,
        ))
    } else {
        None
    };

    let (agent_dir, updater_dir) = match &req.out_dir {
        Some(out) => {
            // Written there only: what the master kept of this host goes.
            remove_issued_bundles(layout, &host);
            (
                BundleKind::Agent.default_dir(out),
                BundleKind::Updater.default_dir(out),
            )
        }
        None => (layout.worker_dir(&host), layout.worker_updater_dir(&host)),
    };
    // A reissue without --updater must not leave a stale updater bundle behind.
    if updater.is_none() {
        remove_dir_if_exists(&updater_dir);
    }
    agent_bundle.write(&agent_dir)?;
    if let Some((b, _)) = &updater {
        b.write(&updater_dir)?;
    }
    if let Some(master) = &req.master {
        decnet_pki::bundle::record_master(&agent_dir, master)?;
        if updater.is_some() {
            decnet_pki::bundle::record_master(&updater_dir, master)?;
        }
    }

    let mut certs = vec![CertRecord::of_leaf(
        &agent_leaf,
        host.as_str(),
        CertRole::Agent,
    )];
    if let Some((_, leaf)) = &updater {
        certs.push(CertRecord::of_leaf(leaf, host.as_str(), CertRole::Updater));
    }
    let now = unix_now();
    let mut record = HostRecord::new(
        host.as_str(),
        &address,
        req.agent_port
            .or(existing.as_ref().map(|h| h.agent_port))
            .unwrap_or(AGENT_PORT),
        req.updater_port
            .or(existing.as_ref().map(|h| h.updater_port))
            .unwrap_or(UPDATER_PORT),
    );
    record.sans = agent_sans(&sans, &host);
    record.agent_fingerprint = Some(agent_leaf.fingerprint.to_hex());
    record.updater_fingerprint = updater.as_ref().map(|(_, l)| l.fingerprint.to_hex());
    record.enrolled_at = now;
    record.updated_at = now;
    let revoked = db.record_enrollment(&record, &certs).await?;
    if let Some(stored) = db.host(host.as_str()).await? {
        record = stored;
    }
    Ok(EnrollOutcome {
        host: record,
        agent_bundle_dir: agent_dir,
        updater_bundle_dir: updater.map(|_| updater_dir),
        revoked,
    })
}

/// The SANs the agent certificate carries (operator SANs + the host name).
fn agent_sans(sans: &[String], host: &HostName) -> Vec<String> {
    let mut all = sans.to_vec();
    if !all.iter().any(|s| s.eq_ignore_ascii_case(host.as_str())) {
        all.push(host.to_string());
    }
    all
}

/// Remove the master's copies of a host's bundles (decommission).
pub fn remove_issued_bundles(layout: &CaLayout, host: &HostName) -> Vec<PathBuf> {
    let dir = layout.worker_dir(host);
    let mut removed = Vec::new();
    if dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
        removed.push(dir);
    }
    removed
}

fn remove_dir_if_exists(dir: &Path) {
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
